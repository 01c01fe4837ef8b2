"""The cropped-video export: a side output that re-encodes a video inside its safe crop.

`encode_cropped` decodes a video with PyAV on the CPU (the H100/H200 have no NVENC), turns
each frame upright as a player would, crops it and encodes an mp4 with the same frames and
timestamps. `ExportPool` runs that on a few threads behind a bounded queue and uploads the
result to OSS or copies it into a folder; a failed export is a result carrying `error`,
never an exception, so it cannot cost a video its scores.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import weakref
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path
from typing import Any

from vqf.config import ExportConfig, StorageConfig
from vqf.errors import ConfigError, VqfError

log = logging.getLogger(__name__)

# encoder -> options giving it `crf` (the value is formatted in) and a CPU-friendly speed
ENCODERS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "{crf}", "preset": "veryfast"},
    "libx265": {"crf": "{crf}", "preset": "veryfast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "{crf}", "b": "0", "deadline": "good", "cpu-used": "4"},
    "libsvtav1": {"crf": "{crf}", "preset": "8"},
    "mpeg4": {"qmin": "{q}", "qmax": "{q}"},  # no crf: 0..51 mapped onto its qscale 1..31
}
# MPEG-4 part 2 caps the time base's denominator; finer time bases are rounded onto this one
COARSE_TIME_BASE = {"mpeg4": Fraction(1, 60000)}
# audio codecs an mp4 holds; other audio is dropped rather than re-encoded
MP4_AUDIO = {"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
# display rotation (counter-clockwise degrees) -> FFmpeg filters that turn the stored frame
# upright, the convention of vqf.video.probe and vqf.video.graph.stored_roi
UPRIGHT = {
    0: [],
    90: [("transpose", "cclock")],
    180: [("hflip", ""), ("vflip", "")],
    270: [("transpose", "clock")],
}


class ExportError(VqfError):
    """One export failed; `kind` is what its result's error carries as `type`."""

    def __init__(self, kind: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.kind = kind


def check_codec(codec: str) -> None:
    """Raises ConfigError unless `codec` is an encoder vqf knows and this FFmpeg build has."""
    import av

    try:
        found = av.codec.Codec(codec, "w")
        present = found.type == "video" and codec in ENCODERS
    except (av.codec.codec.UnknownCodecError, ValueError):
        present = False
    if not present:
        here = [name for name in ENCODERS if _has_encoder(name)]
        raise ConfigError(
            f"export.codec = {codec!r} is not an encoder vqf can export with",
            hint=f"allowed here: {', '.join(here) or 'none (this FFmpeg has no video encoders)'}",
        )


def _has_encoder(name: str) -> bool:
    import av

    try:
        return av.codec.Codec(name, "w").type == "video"
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False


def even_crop(
    crop: tuple[int, int, int, int], *, width: int, height: int
) -> tuple[int, int, int, int]:
    """`crop` (x0, y0, x1, y1) in a width x height frame, shrunk on the right and bottom to
    even sizes (yuv420p needs them); raises ExportError when it is empty or outside."""
    x0, y0, x1, y1 = (int(v) for v in crop)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ExportError(
            "bad_crop",
            f"crop {tuple(crop)} is not inside the displayed {width}x{height} frame",
            hint="give (x0, y0, x1, y1) with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height",
        )
    w, h = (x1 - x0) // 2 * 2, (y1 - y0) // 2 * 2
    if w < 2 or h < 2:
        raise ExportError("bad_crop", f"crop {tuple(crop)} is under 2x2 pixels")
    return x0, y0, x0 + w, y0 + h


def encode_cropped(
    src: Path,
    dest: Path,
    *,
    crop: tuple[int, int, int, int],
    rotation: int,
    codec: str,
    crf: int,
) -> dict[str, Any]:
    """Writes the mp4 `dest`: every frame of `src` turned upright, cropped to `crop` and
    encoded with `codec` at `crf`, with the source's timestamps and time base (VFR kept).

    `crop` is (x0, y0, x1, y1) in pixels of the displayed frame, rounded inwards to even
    sizes; `rotation` is the display rotation in counter-clockwise degrees, as
    `vqf.video.probe` reports it. The first audio stream is copied packet for packet when
    mp4 can hold its codec, and dropped otherwise. Returns width, height, frames, bytes and
    whether audio was kept.
    """
    if rotation not in UPRIGHT:
        raise ExportError("bad_rotation", f"rotation {rotation!r} is not one of 0, 90, 180, 270")
    options = _encoder_options(codec, crf)
    try:
        frames, box, audio = _encode(src, dest, crop, rotation, codec, options)
    except BaseException:
        Path(dest).unlink(missing_ok=True)
        raise
    x0, y0, x1, y1 = box
    return {
        "width": x1 - x0,
        "height": y1 - y0,
        "frames": frames,
        "bytes": Path(dest).stat().st_size,
        "audio": audio,
    }


def _encode(src, dest, crop, rotation, codec, options):
    import av

    with av.open(str(src)) as source, av.open(str(dest), "w", format="mp4") as out:
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        stored_w, stored_h = video.codec_context.width, video.codec_context.height
        quarter = rotation in (90, 270)
        box = even_crop(
            crop, width=stored_h if quarter else stored_w, height=stored_w if quarter else stored_h
        )
        time_base = video.time_base
        coarse = COARSE_TIME_BASE.get(codec)
        out_base = coarse if coarse and time_base.denominator > coarse.denominator else time_base
        stream = out.add_stream(codec, rate=video.average_rate or video.guessed_rate or 30)
        stream.width, stream.height = box[2] - box[0], box[3] - box[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = out_base
        stream.codec_context.time_base = out_base
        stream.options = options
        sound = _audio_of(source)
        sound_out = out.add_stream_from_template(sound) if sound is not None else None
        graph = _graph(video, rotation=rotation, box=box)
        frames, last = 0, None
        for packet in source.demux([s for s in (video, sound) if s is not None]):
            if packet.stream is sound:
                if packet.dts is not None:
                    packet.stream = sound_out
                    out.mux(packet)
                continue
            for frame in packet.decode():
                pts = _rescale(frame.pts, time_base, out_base)
                if pts is None:  # some containers leave it out: count on from the last
                    pts = 0 if last is None else last + 1
                elif last is not None and pts <= last:
                    pts = last + 1  # encoders refuse repeated timestamps
                last = pts
                graph.push(frame)
                turned = graph.pull()
                turned.pts, turned.time_base = pts, out_base
                out.mux(stream.encode(turned))
                frames += 1
        out.mux(stream.encode())
    if frames == 0:
        raise ExportError("no_frames", f"{Path(src).name} has no video frames to export")
    return frames, box, sound is not None


def _rescale(pts: int | None, src: Fraction, dst: Fraction) -> int | None:
    return pts if pts is None or src == dst else round(pts * src / dst)


def _encoder_options(codec: str, crf: int) -> dict[str, str]:
    if codec not in ENCODERS:
        raise ExportError("bad_codec", f"codec {codec!r} is not one of {', '.join(ENCODERS)}")
    q = 1 + round(crf * 30 / 51)
    return {k: v.format(crf=crf, q=q) for k, v in ENCODERS[codec].items()}


def _audio_of(container):
    """The first audio stream, when mp4 can hold its codec as it is."""
    audio = container.streams.audio
    return audio[0] if audio and audio[0].codec_context.name in MP4_AUDIO else None


def _graph(video, *, rotation: int, box: tuple[int, int, int, int]):
    """buffer -> upright turn -> crop -> sink: one frame out per frame in, pixels unconverted."""
    import av

    x0, y0, x1, y1 = box
    graph = av.filter.Graph()
    nodes = [graph.add_buffer(template=video)]
    steps = [*UPRIGHT[rotation], ("crop", f"w={x1 - x0}:h={y1 - y0}:x={x0}:y={y0}:exact=1")]
    for name, args in steps:
        nodes.append(graph.add(name, args))
    nodes.append(graph.add("buffersink"))
    for a, b in itertools.pairwise(nodes):
        a.link_to(b)
    graph.configure()
    return graph


# -- where the exports go ---------------------------------------------------------------------


def object_name(video_id: str) -> str:
    """A safe file name for `video_id`: other characters become '_', and a short hash of the
    id is added whenever that changed it, so two ids never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("._")[:150]
    if safe != video_id or not safe:
        digest = hashlib.sha1(video_id.encode()).hexdigest()[:10]
        safe = f"{safe}-{digest}" if safe else digest
    return f"{safe}.mp4"


class Uploader:
    """Puts a finished export at `target`: an `oss://bucket/prefix/` or a local folder."""

    def __init__(self, target: str, *, storage: StorageConfig, env=None):
        if not target.strip():
            raise ConfigError(
                "export.target is empty", hint="give oss://bucket/prefix/ or a local folder"
            )
        self.target = target
        self._oss = None
        if target.lower().startswith("oss://"):
            from vqf.storage.oss import OssTier

            self._oss = OssTier(storage, env=os.environ if env is None else env)
            if not self._oss.is_available():
                raise ConfigError(
                    f"export.target = {target!r} needs OSS, which is "
                    f"{self._oss.unavailable_reason()}",
                    hint="set OSS_ENDPOINT, OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET",
                )
            bucket, _, prefix = target[len("oss://") :].partition("/")
            self._bucket = bucket
            self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        else:
            self._folder = Path(target).expanduser().absolute()

    def destination(self, video_id: str) -> str:
        """Where the export of `video_id` goes: `oss://bucket/key` or an absolute path."""
        if self._oss is not None:
            return f"oss://{self._bucket}/{self._prefix}{object_name(video_id)}"
        return str(self._folder / object_name(video_id))

    def upload(self, local: Path, *, video_id: str) -> str:
        """Uploads (or moves) `local` to the destination of `video_id` and returns its URL.
        A folder target only ever shows complete files: a temporary name, then a rename."""
        dest = self.destination(video_id)
        if self._oss is not None:
            return self._oss.upload(local, dest)
        path = Path(dest)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part-{os.getpid()}-{threading.get_ident()}")
        try:
            shutil.copyfile(local, part)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return str(path)


# -- the pool ---------------------------------------------------------------------------------


class ExportPool:
    """`config.workers` threads encoding and uploading exports, at most `config.queue`
    waiting; `submit` blocks beyond that, which bounds the disk the sources hold.

    Temporary files (the source's link or copy, the encoded mp4) live in `directory`,
    `storage.cache_dir`/export when a cache folder is set, and are removed after each job.
    """

    def __init__(self, config: ExportConfig, *, storage: StorageConfig, stats=None, env=None):
        check_codec(config.codec)
        self.config = config
        self.uploader = Uploader(config.target, storage=storage, env=env)
        self.stats = stats
        self.directory, private = _work_folder(storage.cache_dir)
        self._remove_folder = (
            weakref.finalize(self, shutil.rmtree, self.directory, True) if private else None
        )
        self._jobs: queue.Queue = queue.Queue(maxsize=config.queue)
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"vqf-export-{i}", daemon=True)
            for i in range(config.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        src: Path,
        *,
        video_id: str,
        crop: tuple[int, int, int, int],
        rotation: int,
    ) -> Future[dict[str, Any]]:
        """Queues the export of `src` and returns a future of its result (never an exception).

        `src` is linked (or copied) to a private name first: the caller may delete it as
        soon as this returns. Blocks while `config.queue` jobs are already waiting.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("ExportPool.submit after close()")
            stem = f"vqf-{os.getpid()}-{next(self._names)}"
        future: Future[dict[str, Any]] = Future()
        future.set_running_or_notify_cancel()
        try:
            own = self._take(Path(src), stem)
        except Exception as e:
            self._finish(future, _error("source_failed", e), video_id)
            return future
        self._jobs.put((own, stem, video_id, tuple(crop), rotation, future))
        return future

    def close(self) -> None:
        """Waits for queued and running jobs, then stops the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        if self._remove_folder is not None:
            self._remove_folder()

    def __enter__(self) -> ExportPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, src: Path, stem: str) -> Path:
        own = self.directory / f"{stem}-src{src.suffix[:8]}"
        try:
            os.link(src, own)
        except OSError:
            if not src.is_file():
                raise
            shutil.copyfile(src, own)  # another file system, or links not allowed
            if self.stats is not None:
                self.stats.add("export_source_copies")
        return own

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            own, stem, video_id, crop, rotation, future = job
            encoded = self.directory / f"{stem}.mp4"
            result = _error("internal", RuntimeError("export stopped unexpectedly"))
            try:
                result = self._export(own, encoded, video_id, crop, rotation)
            except Exception as e:
                kind = e.kind if isinstance(e, ExportError) else "upload_failed"
                result = _error(kind, e)
            finally:
                own.unlink(missing_ok=True)
                encoded.unlink(missing_ok=True)
                self._finish(future, result, video_id)

    def _export(self, src: Path, encoded: Path, video_id, crop, rotation) -> dict[str, Any]:
        try:
            info = encode_cropped(
                src,
                encoded,
                crop=crop,
                rotation=rotation,
                codec=self.config.codec,
                crf=self.config.crf,
            )
        except ExportError:
            raise
        except Exception as e:
            raise ExportError("encode_failed", f"{type(e).__name__}: {e}") from e
        return {"url": self.uploader.upload(encoded, video_id=video_id), **info}

    def _finish(self, future: Future, result: dict[str, Any], video_id: str) -> None:
        failed = "error" in result
        if failed:
            log.warning("export of %s failed: %s", video_id, result["error"]["message"])
        if self.stats is not None:
            self.stats.add("exports_failed" if failed else "exports_ok")
        future.set_result(result)


def _error(kind: str, e: BaseException) -> dict[str, Any]:
    message = e.message if isinstance(e, VqfError) else f"{type(e).__name__}: {e}"
    return {"error": {"type": kind, "message": message[:500]}}


def _work_folder(cache_dir: str) -> tuple[Path, bool]:
    """The folder for temporary files, and whether it is private to this pool."""
    if cache_dir:
        from vqf.storage.cache import remove_orphans

        folder = Path(cache_dir) / "export"
        folder.mkdir(parents=True, exist_ok=True)
        remove_orphans(folder)  # what a killed process left behind
        return folder, False
    return Path(tempfile.mkdtemp(prefix="vqf-export-")), True
