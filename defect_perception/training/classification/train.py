"""Teacher training and distillation: one step-based loop for every method.

- Step-based (not epochs) so a CPU budget is one number; cosine LR with warm-up; AdamW.
- Validation every `eval_every` steps on the val part; the best step is `best.pt`
  (model selection never looks at the test split); `last.pt` carries optimizer, scheduler
  and RNG state, so `resume` continues where a killed run stopped.
- CPU works (`threads`), CUDA is used when present, and `torchrun --nproc_per_node N` runs
  DDP (gloo on CPU, nccl on CUDA); only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defect_perception.training.classification import losses, models
from defect_perception.training.classification.config import TrainConfig
from defect_perception.training.classification.data import Augment, TileSet, to_input

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- checkpoints
def build_model(arch: dict, num_classes: int, pretrained: bool = False,
                teacher: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from its checkpoint `arch` description."""
    if arch["type"] == "simkd":
        trunk = models.build(arch["name"], num_classes, pretrained)
        if teacher is None:
            teacher = models.build(arch["teacher_name"], num_classes, False)
        model: nn.Module = models.SimKDStudent(trunk, teacher, arch.get("hidden", 128))
    else:
        model = models.build(arch["name"], num_classes, pretrained)
    if arch.get("levels"):
        model = models.HierarchicalModel(model, arch["levels"])
    return model


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint metadata) from a `best.pt` / `last.pt`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ck = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(ck, dict) or ck.get("kind") != "classifier":
        raise ValueError(f"{path}: not a classifier checkpoint from this toolkit")
    model = build_model(ck["arch"], len(ck["classes"]))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck


def _meta(cfg: TrainConfig, arch: dict, ts: TileSet) -> dict:
    return {"kind": "classifier", "arch": arch, "classes": ts.classes, "tree": ts.tree,
            "input": {"size": cfg.size, "tile": cfg.tile, "overlap": cfg.overlap, "color": cfg.color,
                      "mean": list(cfg.mean), "std": list(cfg.std)},
            "config": cfg.to_dict()}


# ---------------------------------------------------------------- the loop
class _Step(nn.Module):
    """Everything a loss may need from one student forward, as one module call (DDP-safe)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict:
        f = self.model.forward_features(x)
        out = {"features": f, "logits": self.model.forward_head(f)}
        if isinstance(self.model, models.HierarchicalModel):
            pooled = self.model.forward_head(f, pre_logits=True)
            out["levels"] = [h(pooled) for h in self.model.heads] + [out["logits"]]
        return out


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)


def make_student(cfg: TrainConfig, ts: TileSet, teacher: nn.Module | None) -> tuple[nn.Module, dict]:
    n = len(ts.classes)
    arch: dict = {"type": "simkd" if cfg.method == "simkd" else "plain", "name": cfg.model}
    if cfg.method == "simkd":
        arch.update(teacher_name=teacher.arch_name if hasattr(teacher, "arch_name") else cfg.teacher,
                    hidden=cfg.simkd_hidden)
    if cfg.hierarchy:
        if not ts.tree:
            raise ValueError("hierarchy: the dataset has no category tree (add tree.txt)")
        arch["levels"] = models.tree_levels(ts.classes, ts.tree)
    model = build_model(arch, n, cfg.pretrained, teacher=_plain(teacher) if teacher is not None else None)
    if cfg.init:
        state = torch.load(cfg.init, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        missing, unexpected = model.load_state_dict(state, strict=False)
        log.info("init from %s (missing %d, unexpected %d keys)", cfg.init, len(missing), len(unexpected))
    if cfg.method == "simkd":       # the reused classifier is the teacher's, frozen
        model_simkd = model.base if isinstance(model, models.HierarchicalModel) else model
        model_simkd.head.classifier.load_state_dict(_plain(teacher).classifier.state_dict())
    return model, arch


def _plain(m: nn.Module) -> nn.Module:
    return m.base if isinstance(m, models.HierarchicalModel) else m


def fit(cfg: TrainConfig, train: TileSet, val: TileSet, out_dir: Path, progress: bool = True,
        resume: bool = False) -> dict:
    """Train (or distill) per `cfg`; returns a summary (best val accuracy, step, seconds)."""
    rank, local_rank, world = _dist()
    if cfg.val_limit and len(val) > cfg.val_limit:
        val = val.subset(np.linspace(0, len(val) - 1, cfg.val_limit).round().astype(np.int64))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    device = _device(cfg, local_rank)
    out_dir = Path(out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.yaml")

    teacher = None
    if cfg.method != "none":
        teacher, tmeta = load_checkpoint(cfg.teacher, "cpu")
        if tmeta["classes"] != train.classes:
            raise ValueError(f"teacher {cfg.teacher} classes {tmeta['classes']} differ from the data's "
                             f"{train.classes}")
        teacher.arch_name = tmeta["arch"]["name"]
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    model, arch = make_student(cfg, train, teacher)
    model.to(device)
    frozen = models.early_modules(model, cfg.freeze_stages)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    base_loss = losses.get(cfg.method, temperature=cfg.temperature, lam=cfg.lam, alpha=cfg.alpha,
                           beta=cfg.beta)
    loss_fn = base_loss
    if cfg.hierarchy:
        loss_fn = losses.HierarchicalLoss(base_loss, arch["levels"], cfg.hier_alpha, cfg.hier_beta)
    loss_fn.to(device)
    if base_loss.needs_labels and (train.labels < 0).any():
        raise ValueError(f"method {cfg.method!r} needs labels; the training set has unlabelled items")

    step_mod: nn.Module = _Step(model)
    if world > 1:
        step_mod = nn.parallel.DistributedDataParallel(step_mod, device_ids=[local_rank]
                                                       if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    aug = Augment(**cfg.augment)
    rng = np.random.default_rng([cfg.seed, rank])
    start, best, history = 0, {"val_acc": -1.0, "step": 0}, []
    last = out_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, best, history = ck["step"], ck["best"], ck.get("history", [])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed %s at step %d", last, start)

    meta = _meta(cfg, arch, train)
    order = np.empty(0, np.int64)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.method}:{cfg.model}", unit="step")
    t0 = time.time()
    for step in range(start, cfg.steps):
        model.train()
        for m in frozen:
            m.eval()
        if teacher is not None:
            teacher.eval()
        if len(order) < cfg.batch_size:
            order = np.concatenate([order, rng.permutation(len(train))])
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        imgs = np.stack([aug(train.images[i], rng) for i in idx])
        x = torch.from_numpy(to_input(imgs, cfg.mean, cfg.std)).to(device)
        batch = {"labels": torch.from_numpy(train.labels[idx]).to(device)}
        out = step_mod(x)
        if teacher is not None:
            with torch.no_grad():
                tf = teacher.forward_features(x)
                out["t_features"], out["t_logits"] = tf, teacher.forward_head(tf)
        loss, parts = loss_fn(out, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss.detach())} at step {step} ({parts}); lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        done = step + 1
        if rank == 0 and (done % cfg.eval_every == 0 or done == cfg.steps):
            acc = accuracy(model, val, cfg, device)
            rec = {"step": done, "loss": float(loss.detach()), **parts, "val_acc": acc,
                   "lr": sched.get_last_lr()[0],
                   "seconds": round(time.time() - t0, 1)}
            history.append(rec)
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if acc > best["val_acc"]:
                best = {"val_acc": acc, "step": done}
                torch.save({**meta, "state_dict": model.state_dict(), "step": done, "val_acc": acc},
                           out_dir / "best.pt")
        if rank == 0 and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            torch.save({**meta, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "step": done, "best": best, "history": history,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, last)
    if bar is not None:
        bar.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    summary = {"best_val_acc": best["val_acc"], "best_step": best["step"], "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1), "params": models.param_count(model),
               "out_dir": str(out_dir), "rank": rank}
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def predict(model: nn.Module, ts: TileSet, cfg_or_input, device: torch.device | str = "cpu",
            batch: int = 128) -> np.ndarray:
    """Softmax probabilities [N, C] (fine level)."""
    mean, std = ((cfg_or_input.mean, cfg_or_input.std) if isinstance(cfg_or_input, TrainConfig)
                 else (cfg_or_input["mean"], cfg_or_input["std"]))
    model.eval()
    out = []
    for i in range(0, len(ts), batch):
        x = torch.from_numpy(to_input(ts.images[i:i + batch], mean, std)).to(device)
        out.append(model(x).float().softmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(ts.classes)), np.float32)


def accuracy(model: nn.Module, ts: TileSet, cfg: TrainConfig, device) -> float:
    p = predict(model, ts, cfg, device)
    return float((p.argmax(1) == ts.labels).mean())
