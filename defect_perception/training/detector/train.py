"""One training loop for every stage: baseline, sparsity (L1 on BN gammas) and
fine-tuning of pruned models with or without a teacher (KD)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .data import DetSet, batches
from .evaluate import Detections, map50, postprocess
from .loss import YoloLoss
from .model import DetectExport, YoloDetector, save_checkpoint
from .prune import add_bn_l1_grad


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_iters: int = 100
    mosaic_p: float = 1.0
    close_mosaic: int = 2  # last epochs without mosaic
    sparsity_lambda: float = 0.0  # constant L1 coefficient on BN gammas (0 = off)
    ema: bool = True
    eval_every: int = 2
    seed: int = 0
    threads: int = 1
    kd_temperature: float = 2.0
    kd_mu: float = 0.5
    kd_nu: float = 0.5
    kd_margin: float = 0.0
    keep: str = "best"  # best (by validation mAP) | last (sparsity: the sparsest weights)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown training keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})"
            )
        return cls(**d)


class EMA:
    """Exponential moving average of weights and BN buffers (steadier short trainings)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 500.0):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def _param_groups(model: nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (decay if name == "weight" and isinstance(m, nn.Conv2d) else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


@torch.inference_mode()
def predict(
    model: YoloDetector, ds: DetSet, batch_size: int = 16, score_thr: float = 0.001, nms_iou: float = 0.5
) -> Detections:
    """Detections in original-image pixels for every image of ds."""
    net = DetectExport(model).eval()
    out = Detections()
    for start in range(0, len(ds), batch_size):
        imgs = [im if im.ndim == 3 else im[..., None] for im in ds.images[start : start + batch_size]]
        x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        boxes, scores = net(x)
        for k in range(len(imgs)):
            b, s, c = postprocess(boxes[k].numpy(), scores[k].numpy(), score_thr, nms_iou)
            sx, sy = ds.scale[start + k]
            out.boxes.append(b / np.array([sx, sy, sx, sy], np.float32))
            out.scores.append(s)
            out.classes.append(c)
    return out


def gt_original(ds: DetSet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return (
        [b / np.array([sx, sy, sx, sy], np.float32) for b, (sx, sy) in zip(ds.boxes, ds.scale, strict=False)],
        list(ds.classes),
    )


def evaluate_map(model: YoloDetector, ds: DetSet, class_names: list[str]) -> float:
    gb, gc = gt_original(ds)
    return map50(predict(model, ds), gb, gc, class_names)["map50"]


def train(
    model: YoloDetector,
    train_ds: DetSet,
    cfg: TrainConfig,
    out: str | Path,
    val_ds: DetSet | None = None,
    class_names: list[str] | None = None,
    teacher: YoloDetector | None = None,
    log: Callable[[str], None] = print,
    meta: dict | None = None,
) -> tuple[YoloDetector, list[dict]]:
    """Train in place; keeps the best checkpoint by validation mAP@0.5 (or the last one
    without validation data) at `out`; returns (best model, history)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    crit = YoloLoss(
        model, kd_temperature=cfg.kd_temperature, kd_mu=cfg.kd_mu, kd_nu=cfg.kd_nu, kd_margin=cfg.kd_margin
    )
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    per_epoch = max(len(train_ds) // cfg.batch_size, 1)
    total = per_epoch * cfg.epochs
    sched = lambda it: (
        min(1.0, (it + 1) / max(cfg.warmup_iters, 1))
        * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / total)))
    )
    ema = EMA(model) if cfg.ema else None
    if teacher is not None:
        teacher.eval()
    history, best, it = [], (-1.0, None), 0
    class_names = class_names or [str(i) for i in range(model.cfg.num_classes)]
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        mosaic_p = cfg.mosaic_p if epoch < cfg.epochs - cfg.close_mosaic else 0.0
        sums: dict[str, float] = {}
        n = 0
        for x, t in batches(train_ds, cfg.batch_size, rng, mosaic_p):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * sched(it)
            x_t, t_t = torch.from_numpy(x), torch.from_numpy(t)
            raw = model(x_t)
            traw = None
            if teacher is not None:
                with torch.no_grad():
                    traw = teacher(x_t)
            loss, parts = crit(raw, t_t, traw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            add_bn_l1_grad(model, cfg.sparsity_lambda)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            if ema:
                ema.update(model)
            it += 1
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / cfg.batch_size
        rec = {
            "epoch": epoch + 1,
            "iters": it,
            "minutes": round((time.time() - t0) / 60, 2),
            **{k: round(v / max(n, 1), 5) for k, v in sums.items()},
        }
        cur = ema.model if ema else model
        last = epoch == cfg.epochs - 1
        if val_ds is not None and len(val_ds) and ((epoch + 1) % cfg.eval_every == 0 or last):
            rec["val_map50"] = round(evaluate_map(cur, val_ds, class_names), 4)
        info = {**(meta or {}), "train": asdict(cfg), "epoch": epoch + 1, "val_map50": rec.get("val_map50")}
        if cfg.keep == "last" or val_ds is None:
            save_checkpoint(out, cur, info)
        elif rec.get("val_map50") is not None and rec["val_map50"] > best[0]:
            best = (rec["val_map50"], epoch + 1)
            save_checkpoint(out, cur, info)
        history.append(rec)
        log(" ".join(f"{k}={v}" for k, v in rec.items()))
    from .model import load_checkpoint

    best_model, _ = load_checkpoint(out)
    return best_model, history
