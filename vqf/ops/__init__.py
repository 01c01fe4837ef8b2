"""Operator tools: the live dashboard and status line, `vqf report`, `vqf doctor`, the demo's
generated samples. Measurement (profile, floors, benchmarks, the GPU check) is in `vqf.bench`.
"""
