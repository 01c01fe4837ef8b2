"""Models: V-JEPA 2 backbones, classifier heads, the YOLO detector, and the per-device bank.

Modules: `backbone` (presets, loading, `Backbone.encode`), `heads` (`LinearHead`,
`AttentiveHead`, `save_head`, `load_head`), `detector` (offline ultralytics, `Detector`),
`letterbox` (detector input geometry, no torch), `bank` (`ModelBank`), `checkpoints`
(file layout and `init_random`). Nothing is imported here, so `import vqf.models` stays light.
"""
