"""Measurement: where the time goes and how far from the hardware's floors.

Modules: `profile` (`vqf profile`: the real pipeline on a sample, per-stage table, trace),
`trace` (stage rows, bottleneck, Chrome trace), `floors` (DESIGN.md section 8's floors for
the videos at hand), `baseline` (the seed's design on the same rows), `engine`
(`vqf bench-engine`: scheduler and memory), `video` (`vqf bench-video`: the video plane
against its CPU floor), `soak` (`vqf soak`: a long run), `gpu_check` (`vqf gpu-check`).
Operator tools (dashboard, report, doctor, demo) are in `vqf.ops`; measurement uses them,
never the other way round. Nothing is imported here, so `import vqf.bench` stays light.
"""
