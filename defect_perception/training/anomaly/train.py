"""Two-stage training on good images only, then scale normalisation and threshold calibration.

Stage 1: teacher features of every training image are computed once (frozen teacher) and
cached; EMA statistics are tracked over them and the coupling is fitted by maximum likelihood.
Stage 2: the student regresses the fixed targets (normalised, coupled teacher features).
Afterwards the per-scale maps are normalised by their mean on held-out good images and the
threshold is set for the target false-reject rate on those same held-out images.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from defect_perception.training.anomaly.config import AnomalyConfig
from defect_perception.training.anomaly.metrics import calibrate_threshold
from defect_perception.training.anomaly.model import AnomalyNet, EMANorm

log = logging.getLogger(__name__)


def _batches(n: int, batch: int):
    for i in range(0, n, batch):
        yield slice(i, min(n, i + batch))


@torch.no_grad()
def teacher_features(model: AnomalyNet, x: np.ndarray, batch: int = 16, progress: bool = True
                     ) -> list[torch.Tensor]:
    """Raw teacher features for every image, stored as float16 to keep memory small."""
    from tqdm import tqdm

    chunks: list[list[torch.Tensor]] = []
    for sl in tqdm(list(_batches(len(x), batch)), desc="teacher features", disable=not progress, leave=False):
        chunks.append([f.half() for f in model.teacher(torch.from_numpy(x[sl]))])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@torch.no_grad()
def predict(model: AnomalyNet, x: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N,H,W] and scores [N] of the eval-mode torch model."""
    model.eval()
    maps, scores = [], []
    for sl in _batches(len(x), batch):
        m, s = model(torch.from_numpy(x[sl]))
        maps.append(m[:, 0].numpy())
        scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def _crop_batch(cfg: AnomalyConfig, strides: list[int], x: torch.Tensor, targets: list[torch.Tensor],
                rng: np.random.Generator, margin: int = 8):
    """Random crops aligned to the coarsest stride. Targets keep their full-image context, so a
    crop edge inside the image (margin px), where the student lacks that context, is left out of
    the loss; crop edges on the image edge are kept (the student must learn the real borders),
    and a third of the crops are snapped to an image edge per axis so borders are seen often."""
    c, s, step = cfg.crop, cfg.size, max(strides)
    n_pos = (s - c) // step
    offs = []
    for _ in range(2):
        u = rng.random()
        offs.append(0 if u < 1 / 6 else n_pos * step if u < 1 / 3 else int(rng.integers(0, n_pos + 1)) * step)
    oy, ox = offs
    xc = x[:, :, oy:oy + c, ox:ox + c]
    tc, sl = [], []
    for t, st in zip(targets, strides, strict=False):
        tc.append(t[:, :, oy // st:(oy + c) // st, ox // st:(ox + c) // st])
        m, n = max(1, margin // st), c // st
        y0, x0 = (m if oy > 0 else 0), (m if ox > 0 else 0)
        y1, x1 = (n - m if oy + c < s else n), (n - m if ox + c < s else n)
        sl.append((slice(None), slice(None), slice(y0, y1), slice(x0, x1)))
    return xc, tc, sl


def fit(cfg: AnomalyConfig, train_x: np.ndarray, calib_x: np.ndarray, progress: bool = True,
        feature_cache: str | None = None) -> tuple[AnomalyNet, dict[str, Any]]:
    """Train on good images `train_x` [N,1,S,S] (preprocessed), calibrate on `calib_x`.
    `feature_cache`: a .pt file for the frozen teacher's features of `train_x` (reused when its
    key matches), so ablation runs on the same images do not recompute them."""
    from tqdm import tqdm

    if train_x.shape[-1] != cfg.size or calib_x.shape[-1] != cfg.size:
        raise ValueError(f"images are {train_x.shape[-1]} px but the config says size={cfg.size}")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    model = AnomalyNet(cfg)
    key = [cfg.teacher, cfg.pretrained, list(cfg.blocks), cfg.size, len(train_x),
           float(train_x[:, :, ::7, ::7].sum())]
    feats = None
    if feature_cache:
        from pathlib import Path

        if Path(feature_cache).is_file():
            cached = torch.load(feature_cache, weights_only=False)
            feats = cached["feats"] if cached.get("key") == key else None
    if feats is None:
        feats = teacher_features(model, train_x, progress=progress)
        if feature_cache:
            torch.save({"key": key, "feats": feats}, feature_cache)
    n = len(train_x)
    info: dict[str, Any] = {"variant": cfg.variant(), "train_images": n, "calib_images": len(calib_x)}

    # stage 1: EMA statistics (+ coupling by maximum likelihood)
    if cfg.ema_norm or cfg.coupling:
        model.set_ema_update(cfg.ema_norm)
        params = [p for c in model.couplings for p in c.parameters()]
        opt = torch.optim.Adam(params, lr=cfg.lr) if params else None
        nll = []
        for _ in tqdm(range(cfg.stage1_steps), desc="stage 1 (EMA norm / coupling)", disable=not progress):
            idx = torch.from_numpy(rng.integers(0, n, cfg.batch))
            normed = [norm(f[idx].float()) for f, norm in zip(feats, model.norms, strict=False)]
            if opt is None:
                continue
            loss = sum(c.nll(x) for c, x in zip(model.couplings, normed, strict=False))
            opt.zero_grad()
            loss.backward()
            opt.step()
            nll.append(loss.item())
        model.set_ema_update(False)
        info["stage1_nll_last"] = float(np.mean(nll[-20:])) if nll else None
    for p in model.couplings.parameters():
        p.requires_grad_(False)

    with torch.no_grad():
        targets = [torch.cat([model.targets([f[sl].float() for f in feats])[i].half()
                              for sl in _batches(n, 32)]) for i in range(len(feats))]
    del feats

    # stage 2: the student regresses the targets
    student = model.student
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, cfg.steps)))))
    losses = []
    bar = tqdm(range(cfg.steps), desc="stage 2 (student)", disable=not progress)
    for _step in bar:
        idx = rng.integers(0, n, cfg.batch)
        x = torch.from_numpy(train_x[idx])
        ti = torch.from_numpy(idx)
        tb = [t[ti].float() for t in targets]
        if cfg.crop and cfg.crop < cfg.size:
            x, tb, keep = _crop_batch(cfg, model.teacher.strides, x, tb, rng)
            out = student(x)
            loss = sum(((o[k] - t[k]) ** 2).mean() for o, t, k in zip(out, tb, keep, strict=False))
        else:
            out = student(x)
            loss = sum(((o - t) ** 2).mean() for o, t in zip(out, tb, strict=False))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if _step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if not progress and _step % 200 == 0:
                print(f"stage 2 step {_step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    info["stage2_loss_last"] = float(np.mean(losses[-50:]))
    model.eval()

    # scale normalisation and calibration on held-out good images
    with torch.no_grad():
        per_scale = [[] for _ in model.teacher.channels]
        for sl in _batches(len(calib_x), 16):
            for i, m in enumerate(model.scale_maps(torch.from_numpy(calib_x[sl]))):
                per_scale[i].append(m.mean().item() * (sl.stop - sl.start))
        model.scale_norm.copy_(torch.tensor([sum(v) / len(calib_x) for v in per_scale]).clamp_min(1e-8))
    info.update(calibrate(model, calib_x))
    info.update({"scale_norm": model.scale_norm.tolist(), "train_seconds": round(time.time() - t0, 1)})
    return model, info


def calibrate(model: AnomalyNet, calib_x: np.ndarray) -> dict[str, Any]:
    """Threshold for the config's target false-reject rate on held-out good images, and the
    review band from its review rate."""
    cfg = model.cfg
    _, calib_scores = predict(model, calib_x)
    thr = calibrate_threshold(calib_scores, cfg.target_frr)
    lo = calibrate_threshold(calib_scores, cfg.review_frr)
    return {
        "threshold": thr, "review_band": [min(lo, thr), thr],
        "calibration": {"target_frr": cfg.target_frr, "review_frr": cfg.review_frr,
                        "images": len(calib_x), "measured_frr": float((calib_scores >= thr).mean()),
                        "on": "held-out good images (never used for training)",
                        "score_p50": float(np.median(calib_scores)), "score_max": float(calib_scores.max())},
    }


@torch.no_grad()
def tune_scoring(model: AnomalyNet, good_x: np.ndarray, bad_x: np.ndarray,
                 grid: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick scoring options (border, score, topk_fraction, blur_sigma) by image AUROC on a
    validation set of good and defective images (never the test split). The weights and the
    per-scale maps stay the same; only the map-to-score reduction changes."""
    from dataclasses import replace

    from defect_perception.training.anomaly.metrics import auroc

    model.eval()
    size = (model.cfg.size, model.cfg.size)
    raw = {"good": [], "bad": []}
    for key, x in (("good", good_x), ("bad", bad_x)):
        for sl in _batches(len(x), 16):
            raw[key].append(model.scale_maps(torch.from_numpy(x[sl])))
    base_cfg = model.cfg
    labels = np.r_[np.zeros(len(good_x)), np.ones(len(bad_x))]
    table = []
    for opts in grid:
        model.set_postprocess(replace(base_cfg, **opts))
        scores = [model.image_score(model.combine(m, size)).numpy() for k in ("good", "bad") for m in raw[k]]
        table.append({**opts, "val_image_auroc": auroc(np.concatenate(scores), labels)})
    best = max(table, key=lambda r: r["val_image_auroc"])
    chosen = {k: v for k, v in best.items() if k != "val_image_auroc"}
    model.set_postprocess(replace(base_cfg, **chosen))
    return chosen, table


def save_checkpoint(path, model: AnomalyNet, info: dict) -> None:
    torch.save({"config": model.cfg.to_dict(), "state": model.state_dict(), "info": info}, path)


def load_checkpoint(path, scoring: dict[str, Any] | None = None) -> tuple[AnomalyNet, dict]:
    """Model + training info; `scoring` overrides AnomalyConfig.SCORING options (no retraining)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    data = dict(ckpt["config"])
    bad = [k for k in (scoring or {}) if k not in AnomalyConfig.SCORING]
    if bad:
        raise ValueError(f"{path}: {bad} change the weights; only {AnomalyConfig.SCORING} can be re-scored")
    data.update({k: v for k, v in (scoring or {}).items() if v is not None})
    cfg = AnomalyConfig(**data)
    cfg.pretrained = False   # weights come from the checkpoint
    model = AnomalyNet(cfg)
    state = {k: v for k, v in ckpt["state"].items() if k not in AnomalyNet.POSTPROCESS_BUFFERS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k not in AnomalyNet.POSTPROCESS_BUFFERS]:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    for m in model.norms:
        if isinstance(m, EMANorm):
            m.update = False
    model.eval()
    return model, ckpt["info"]
