"""Stages shared by the CLI commands and bench/detector_table.py: data loading with the
validation split, baseline training with K-means++ anchors, sparsity training, channel
and layer pruning, fine-tuning with and without KD, and evaluation on the test split.

Config (YAML) sections: `data`, `model` (DetectorConfig), `train` (TrainConfig for the
baseline), `compress` {sparse: TrainConfig overrides, channel_ratio, max_layer_ratio,
layer_blocks, kd_teacher (baseline | sparse), finetune: TrainConfig overrides}, `eval` {nms_iou}.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defect_perception.core.figures import pyplot, save_figure
from defect_perception.core.yaml_file import read_yaml_mapping

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "data": {"root": None, "val_fraction": 0.1, "template": False, "limit": 0, "seed": 0, "on_error": "fail"},
    "model": {"width": 0.25, "img_size": 320},
    "train": {"epochs": 30},
    "compress": {
        "sparse": {
            "epochs": 10,
            "sparsity_lambda": 0.002,
            "lr": 1e-3,
            "keep": "last",
            "mosaic_p": 1.0,
            "close_mosaic": 0,
            "warmup_iters": 10,
        },
        "channel_ratio": 0.6,
        "max_layer_ratio": 0.9,
        "layer_blocks": 2,
        "kd_teacher": "baseline",
        "finetune": {"epochs": 10, "lr": 1e-3, "warmup_iters": 20},
    },
    "eval": {"nms_iou": 0.5},
}


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict[str, Any]:

    cfg = json.loads(json.dumps(DEFAULTS))
    user = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: detector config not found")
        user = read_yaml_mapping(path, "detector config")
        unknown = set(user) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"{path}: unknown sections {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    for src in (user, overrides or {}):
        for sec, vals in src.items():
            if isinstance(vals, dict) and isinstance(cfg.get(sec), dict):
                for k, v in vals.items():
                    if isinstance(v, dict) and isinstance(cfg[sec].get(k), dict):
                        cfg[sec][k].update(v)
                    else:
                        cfg[sec][k] = v
            else:
                cfg[sec] = vals
    return cfg


@dataclass
class Data:
    train: Any
    val: Any
    test: Any
    templates: Any  # defect-free templates of the test split (false-alarm rate)


def load_data(cfg: dict[str, Any], need_test: bool = True) -> Data:
    """Train/validation (and test) sets. `data.on_error`: 'fail' stops at the first broken
    file (DatasetError naming the file and line), 'skip' logs each and goes on without it."""
    from ..cli_errors import check_on_error
    from ..deeppcb import DEFAULT_ROOT, DatasetError, deterministic_split, read_split
    from .data import load_samples

    d = cfg["data"]
    on_error = check_on_error(d.get("on_error") or "fail", "data.on_error")
    root = Path(d["root"]) if d.get("root") else DEFAULT_ROOT
    size = int(cfg["model"]["img_size"])
    skipped: list[str] = []
    tv = read_split(root, "trainval", on_error=on_error, skipped=skipped)
    vf = float(d["val_fraction"])
    train_s, val_s = deterministic_split(tv, (1 - vf, vf), seed=int(d.get("seed", 0)))
    test_s = read_split(root, "test", on_error=on_error, skipped=skipped) if need_test else []
    if d.get("limit"):
        n = int(d["limit"])
        train_s, val_s, test_s = train_s[:n], val_s[: max(n // 4, 4)], test_s[: max(n // 4, 4)]
    tpl = bool(d.get("template"))

    def load(samples, **kw):
        return load_samples(samples, size, tpl, on_error=on_error, skipped=skipped, **kw)

    data = Data(load(train_s, progress=True), load(val_s), load(test_s), load(test_s, which="temp"))
    if skipped:
        log.warning("skipped %d bad sample(s) (data.on_error: skip; see warnings above)", len(skipped))
    if not len(data.train):
        raise DatasetError(f"{root}: no usable training samples in trainval.txt"
                           + (f" ({len(skipped)} bad sample(s) skipped)" if skipped else ""))
    return data


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse bad training keys (baseline, sparse and fine-tune sections) before any data
    is loaded, instead of after hours of earlier stages."""
    from .train import TrainConfig

    for where, section in (("train", {}), ("compress.sparse", cfg["compress"].get("sparse") or {}),
                           ("compress.finetune", cfg["compress"].get("finetune") or {})):
        try:
            TrainConfig.from_dict({**cfg["train"], **section})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    if cfg["compress"].get("kd_teacher") not in KD_TEACHERS:
        raise ValueError(f"compress.kd_teacher: {cfg['compress'].get('kd_teacher')!r} is not one of "
                         f"{', '.join(KD_TEACHERS)}")


def load_for_training(path: str | Path, overrides: dict, on_error: str | None = None
                      ) -> tuple[dict[str, Any], Data]:
    """Config (checked) and training data for the training CLIs; a bad config or dataset
    file raises OSError / ValueError naming it, before any training starts."""
    if on_error:
        overrides.setdefault("data", {})["on_error"] = on_error
    cfg = load_config(path, overrides)
    check_config(cfg)
    return cfg, load_data(cfg, need_test=False)


def model_config(cfg: dict[str, Any], train_ds) -> dict[str, Any]:
    """Model config with K-means++ anchors fitted to the training boxes (model pixels)."""
    from .anchors import kmeanspp_anchors, mean_best_iou

    m = dict(cfg["model"])
    m["in_channels"] = 2 if cfg["data"].get("template") else 1
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train_ds.boxes])
    anchors = kmeanspp_anchors(wh, 9, seed=0)
    log.info("anchors %s (mean best IoU %.3f)", np.round(anchors, 1).tolist(), mean_best_iou(wh, anchors))
    m.setdefault("anchors", [[round(float(w), 2), round(float(h), 2)] for w, h in anchors])
    return m


def evaluate_model(
    model,
    data: Data,
    nms_iou: float = 0.5,
    threshold: float | None = None,
    pr_png: str | Path | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Test-split metrics; the operating threshold is chosen on validation (never on test)."""
    from ..deeppcb import DEFECT_TYPES
    from .evaluate import best_f_threshold, deeppcb_criterion, false_alarm_rate, map50, plot_pr
    from .train import gt_original, predict

    vd = predict(model, data.val, nms_iou=nms_iou)
    vb, vc = gt_original(data.val)
    val_map = map50(vd, vb, vc, DEFECT_TYPES)["map50"]
    if threshold is None:
        threshold, _ = best_f_threshold(vd, vb, vc, DEFECT_TYPES)
    dets = predict(model, data.test, nms_iou=nms_iou)
    gb, gc = gt_original(data.test)
    m = map50(dets, gb, gc, DEFECT_TYPES)
    crit = deeppcb_criterion(dets, gb, gc, DEFECT_TYPES, threshold)
    fa = false_alarm_rate(predict(model, data.templates, nms_iou=nms_iou), threshold)
    if pr_png:
        plot_pr(dets, gb, gc, DEFECT_TYPES, pr_png, title)
    return {
        "split": "DeepPCB test (official list, 168 pairs)",
        "map50": m["map50"],
        "ap50": m["ap50"],
        "score_threshold": threshold,
        "threshold_from": "validation split of trainval (max F-score)",
        "deeppcb": crit,
        "f_score": crit["all"]["f_score"],
        "precision": crit["all"]["precision"],
        "recall": crit["all"]["recall"],
        "template_false_alarm_rate": fa,
        "val_map50": val_map,
    }


KD_TEACHERS = ("baseline", "sparse")  # unpruned models the KD fine-tuning can learn from
STAGES = ("baseline", "sparse", "channel_pruned", "layer_pruned", "ft_kd", "ft_plain")
STAGE_TITLES = {
    "baseline": "baseline",
    "sparse": "sparse (L1 on BN gammas)",
    "channel_pruned": "channel-pruned",
    "layer_pruned": "channel + layer-pruned",
    "ft_kd": "pruned + KD fine-tune",
    "ft_plain": "pruned + plain fine-tune",
}


def _train_cfg(cfg: dict[str, Any], section: dict[str, Any]):
    from .train import TrainConfig

    base = {k: v for k, v in cfg["train"].items()}
    base.update(section)
    return TrainConfig.from_dict(base)


def plot_gammas(models: dict[str, Any], path: str | Path) -> Path:
    """Histogram of |gamma| over all BN layers, one curve per model (before/after sparsity)."""
    plt = pyplot()

    from .prune import all_gammas

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in models.items():
        g = all_gammas(m).numpy()
        ax.hist(g, bins=80, range=(0, max(1.5, float(np.percentile(g, 99.5)))), histtype="step", label=name)
    ax.set_xlabel("|gamma| (BN scale)")
    ax.set_ylabel("channels")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("BN gamma distribution")
    return save_figure(fig, path, dpi=110)


def run_stage(stage: str, cfg: dict[str, Any], data: Data, work: Path, img_dir: Path | None = None) -> Path:
    """Produce work/<stage>.pt from the previous stages (each stage reuses what exists)."""
    from ..deeppcb import DEFECT_TYPES
    from .model import build, load_checkpoint, save_checkpoint
    from .prune import channel_prune, layer_prune
    from .train import train

    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{stage}.pt"
    if out.is_file():
        log.info("%s: reusing %s", stage, out)
        return out
    c = cfg["compress"]
    meta = {"stage": stage, "config": cfg}
    if stage == "baseline":
        model = build(model_config(cfg, data.train))
        train(model, data.train, _train_cfg(cfg, {}), out, data.val, DEFECT_TYPES, log=log.info, meta=meta)
    elif stage == "sparse":
        base, _ = load_checkpoint(run_stage("baseline", cfg, data, work, img_dir))
        model, _ = load_checkpoint(work / "baseline.pt")
        sparse, _ = train(
            model,
            data.train,
            _train_cfg(cfg, c["sparse"]),
            out,
            data.val,
            DEFECT_TYPES,
            log=log.info,
            meta=meta,
        )
        if img_dir:
            plot_gammas(
                {"before sparsity (baseline)": base, "after sparsity": sparse}, img_dir / "gamma_hist.png"
            )
    elif stage == "channel_pruned":
        model, _ = load_checkpoint(run_stage("sparse", cfg, data, work, img_dir))
        save_checkpoint(
            out, channel_prune(model, float(c["channel_ratio"]), float(c["max_layer_ratio"])), meta
        )
    elif stage == "layer_pruned":
        model, _ = load_checkpoint(run_stage("channel_pruned", cfg, data, work, img_dir))
        save_checkpoint(out, layer_prune(model, int(c["layer_blocks"])), meta)
    elif stage in ("ft_kd", "ft_plain"):
        model, _ = load_checkpoint(run_stage("layer_pruned", cfg, data, work, img_dir))
        teacher = None
        if stage == "ft_kd":  # the unpruned model: the original (paper) or the sparsity-trained one
            teacher, _ = load_checkpoint(run_stage(c["kd_teacher"], cfg, data, work, img_dir))
        train(
            model,
            data.train,
            _train_cfg(cfg, c["finetune"]),
            out,
            data.val,
            DEFECT_TYPES,
            teacher=teacher,
            log=log.info,
            meta=meta,
        )
    else:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    return out
