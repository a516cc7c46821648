"""Classifier training and distillation (torch; offline only, never imported by the runtime).

Modules, one job each: `data` (DeepPCB tiles, folder-per-class datasets, augmentation),
`models` (models by name, SimKD student, per-level heads), `losses` (registered KD losses),
`config` (YAML configs), `train` (teacher / distillation loops), `evaluate` (metrics, plots,
latency), `export` (ONNX + model card).
"""
