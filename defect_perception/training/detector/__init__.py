"""Compact YOLO-style defect detector for DeepPCB, and its compression pipeline.

Modules, one job each: `model` (architecture, config + state_dict checkpoints), `anchors`
(K-means++ with 1-IoU), `data` (DeepPCB loading, mosaic), `loss` (target assignment, CIoU,
KD terms), `train` (one loop for baseline / sparsity / fine-tuning), `prune` (BN-gamma L1,
channel pruning with torch-pruning, residual-block layer pruning), `evaluate` (mAP@0.5,
DeepPCB criterion, false alarms, PR curves), `export` (ONNX with box decode + model card).
"""
