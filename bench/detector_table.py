#!/usr/bin/env python3
"""Detector compression table: runs (or reuses) every stage of the pipeline, then measures
params, ONNX size, GFLOPs, DeepPCB test mAP@0.5 / F-score, template false-alarm rate and
ONNX Runtime CPU latency (batch 1), writes the detector section of docs/results.md and
docs/benchmarks.md, and ships the chosen compressed model to models/deeppcb-detector/.

  python bench/detector_table.py --config config/train/detector_small.yaml --work /tmp/detector_run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {"map50": 0.975, "f_score": 0.982, "onnx_mb": 4.19, "speedup": 2.0}


def replace_section(path: Path, area: str, body: str) -> None:
    begin, end = f"<!-- BEGIN {area} -->", f"<!-- END {area} -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


def machine() -> str:
    import os

    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    osname = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {osname}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "config/train/detector_small.yaml"))
    ap.add_argument("--work", default="/tmp/detector_run", help="stage checkpoints (reused when present)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training stages")
    ap.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--results", default=str(REPO / "docs/results.md"))
    ap.add_argument("--benchmarks", default=str(REPO / "docs/benchmarks.md"))
    ap.add_argument("--ship", default=str(REPO / "models/deeppcb-detector"), help="'' to skip shipping")
    ap.add_argument("--img-dir", default=str(REPO / "docs/img/detector"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import numpy as np
    import torch

    from defect_perception.core.model_card import write_card
    from defect_perception.training.detector.export import (
        export_onnx,
        gflops,
        make_card,
        ort_latency_many,
        ort_session,
    )
    from defect_perception.training.detector.model import DetectExport, count_params, load_checkpoint
    from defect_perception.training.detector.pipeline import (
        STAGE_TITLES,
        STAGES,
        evaluate_model,
        load_config,
        load_data,
        plot_gammas,
        run_stage,
    )

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {"train": {"threads": args.threads}})
    data = load_data(cfg)
    work, img_dir = Path(args.work), Path(args.img_dir)
    rows: dict[str, dict] = {}
    for stage in STAGES:
        ck = run_stage(stage, cfg, data, work, img_dir)
        model, meta = load_checkpoint(ck)
        model.eval()
        png = img_dir / f"pr_{stage}.png" if stage in ("baseline", "ft_kd", "ft_plain") else None
        m = evaluate_model(
            model, data, cfg["eval"]["nms_iou"], pr_png=png, title=f"DeepPCB test: {STAGE_TITLES[stage]}"
        )
        onnx_path = export_onnx(model, work / "onnx" / f"{stage}.onnx")
        s = model.cfg.img_size
        rows[stage] = {
            "params": count_params(model),
            "onnx_mb": onnx_path.stat().st_size / 1e6,
            "gflops": gflops(model),
            "shape": (1, model.cfg.in_channels, s, s),
            "metrics": m,
            "checkpoint": str(ck),
            "onnx": str(onnx_path),
            "removed_blocks": model.cfg.removed_blocks,
            "epoch": meta.get("epoch"),
        }
        logging.info(
            "%s: mAP50 %.4f F %.4f params %d", stage, m["map50"], m["f_score"], rows[stage]["params"]
        )
    plot_gammas(
        {
            "before sparsity (baseline)": load_checkpoint(rows["baseline"]["checkpoint"])[0],
            "after sparsity": load_checkpoint(rows["sparse"]["checkpoint"])[0],
        },
        img_dir / "gamma_hist.png",
    )
    lat = ort_latency_many(
        {k: Path(r["onnx"]) for k, r in rows.items()},
        {k: r["shape"] for k, r in rows.items()},
        rounds=5,
        runs=max(args.latency_runs // 5, 1),
        threads=args.ort_threads,
    )
    for k in rows:
        rows[k].update(lat[k])
    (work / "table.json").write_text(json.dumps(rows, indent=1, default=float))

    # ship the fine-tuned model with the better *validation* mAP (test never picks)
    pick = max(("ft_kd", "ft_plain"), key=lambda k: rows[k]["metrics"]["val_map50"])
    if args.ship:
        model, _ = load_checkpoint(rows[pick]["checkpoint"])
        model.eval()
        ship = Path(args.ship)
        ship.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rows[pick]["onnx"], ship / "model.onnx")
        s = model.cfg.img_size
        x = torch.from_numpy(
            np.random.default_rng(1).random((2, model.cfg.in_channels, s, s), dtype=np.float32)
        )
        with torch.inference_mode():
            tb, ts = DetectExport(model)(x)
        ob, os_ = ort_session(ship / "model.onnx").run(None, {"input": x.numpy()})
        parity = {
            "boxes_max_abs_diff": float(np.abs(ob - tb.numpy()).max()),
            "scores_max_abs_diff": float(np.abs(os_ - ts.numpy()).max()),
        }
        m = rows[pick]["metrics"]
        metrics = {
            "split": m["split"],
            "map50": round(m["map50"], 4),
            "ap50": {k: round(v, 4) for k, v in m["ap50"].items()},
            "deeppcb_precision": round(m["precision"], 4),
            "deeppcb_recall": round(m["recall"], 4),
            "deeppcb_f_score": round(m["f_score"], 4),
            "deeppcb_iou": 0.33,
            "template_false_alarm_rate": round(m["template_false_alarm_rate"], 4),
            "score_threshold_from": m["threshold_from"],
            "onnx_mb": round(rows[pick]["onnx_mb"], 3),
            "gflops": round(rows[pick]["gflops"], 3),
            "ort_cpu_p50_ms": round(rows[pick]["p50_ms"], 2),
            "ort_parity": parity,
            "note": "reduced CPU run (see docs/results.md); far below the published DeepPCB bar"
            if m["map50"] < TARGETS["map50"]
            else "",
        }
        card = make_card(
            model,
            "deeppcb-detector",
            m["score_threshold"],
            cfg["eval"]["nms_iou"],
            metrics,
            {
                "stage": pick,
                "training_config": cfg,
                "config_file": str(args.config),
                "model_config": model.cfg.to_dict(),
                "command": f"python bench/detector_table.py --config {args.config}",
            },
        )
        write_card(ship, card)
        (ship / "architecture.json").write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
        logging.info("shipped %s -> %s (parity %s)", pick, ship, parity)

    write_docs(rows, pick, cfg, args, machine())
    return 0


def write_docs(rows: dict, pick: str, cfg: dict, args, mach: str) -> None:
    from defect_perception.training.detector.pipeline import STAGE_TITLES

    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cfg_path = Path(args.config).resolve()
    cfg_rel = cfg_path.relative_to(REPO) if REPO in cfg_path.parents else args.config
    dropped = ", ".join(rows["layer_pruned"]["removed_blocks"]) or "none"
    base = rows["baseline"]
    head = (
        "| stage | params | ONNX MB | GFLOPs | mAP@0.5 | DeepPCB P / R / F | thr | template FA | "
        "ORT p50 / p99 ms | speed-up |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for stage, r in rows.items():
        m = r["metrics"]
        lines.append(
            f"| {STAGE_TITLES[stage]} | {r['params']:,} | {r['onnx_mb']:.2f} | {r['gflops']:.2f} | "
            f"{100 * m['map50']:.2f} | {100 * m['precision']:.1f} / {100 * m['recall']:.1f} / "
            f"{100 * m['f_score']:.2f} | {m['score_threshold']:.3f} | "
            f"{100 * m['template_false_alarm_rate']:.1f}% | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
            f"{base['p50_ms'] / r['p50_ms']:.2f}x |"
        )
    fin = rows[pick]
    fm = fin["metrics"]
    kd, pl = rows["ft_kd"]["metrics"], rows["ft_plain"]["metrics"]
    checks = [
        ("compressed mAP@0.5 >= 97.5", 100 * fm["map50"] >= 97.5, f"{100 * fm['map50']:.2f}"),
        ("compressed DeepPCB F-score >= 98.2", 100 * fm["f_score"] >= 98.2, f"{100 * fm['f_score']:.2f}"),
        ("ONNX <= 4.19 MB", fin["onnx_mb"] <= 4.19, f"{fin['onnx_mb']:.2f} MB"),
        (
            ">= 2x faster than baseline (ORT CPU p50)",
            base["p50_ms"] / fin["p50_ms"] >= 2.0,
            f"{base['p50_ms'] / fin['p50_ms']:.2f}x",
        ),
        (
            "KD fine-tuning beats plain fine-tuning (test mAP@0.5)",
            kd["map50"] > pl["map50"],
            f"KD {100 * kd['map50']:.2f} vs plain {100 * pl['map50']:.2f}",
        ),
    ]
    per_class = "| class | " + " | ".join(STAGE_TITLES[s] for s in ("baseline", pick)) + " |\n|---|---|---|\n"
    for name in fm["deeppcb"]:
        if name == "all":
            continue
        cells = []
        for s in ("baseline", pick):
            mm = rows[s]["metrics"]
            ap = mm["ap50"].get(name)
            cells.append(
                f"AP50 {100 * ap:.1f}, F {100 * mm['deeppcb'][name]['f_score']:.1f}"
                if ap is not None
                else "-"
            )
        per_class += f"| {name} | " + " | ".join(cells) + " |\n"
    c = cfg["compress"]
    finished = base.get("epoch") == cfg["train"]["epochs"]
    stopped = "" if finished else "; the run was stopped there to fit the time box"
    body = (
        f"""## Defect detector (DeepPCB), compressed by sparsity, channel + layer pruning and KD

Measured {date} on {mach}; ONNX Runtime {args.ort_threads} thread(s), batch 1, {args.latency_runs} runs per
model, round-robin over the models, while other jobs shared the 2 cores (absolute latencies are noisy;
the ratios between rows are the useful part).
Test split: the official DeepPCB `test.txt` list (168 pairs). Operating threshold and checkpoint
choices come from a 10% validation split of `trainval`, never from the test split.
Command: `python bench/detector_table.py --config {cfg_rel} --work {args.work}`.

**This is a reduced CPU run**: input {cfg["model"]["img_size"]} px (boards are 640 px), width
{cfg["model"]["width"]}, baseline checkpoint from epoch {base.get("epoch")} of a
{cfg["train"]["epochs"]}-epoch cosine schedule
(best validation mAP{stopped}), sparsity {c["sparse"]["epochs"]} epochs
(lambda {c["sparse"]["sparsity_lambda"]}, constant), global channel pruning ratio {c["channel_ratio"]},
{c["layer_blocks"]} residual blocks removed, fine-tuning {c["finetune"]["epochs"]} epochs. The published
bar (98.6 mAP / 98.2 F on DeepPCB; 97.41 mAP after pruning + KD in the YOLOv4 paper) needs the full
recipe in `config/train/detector.yaml` on a bigger machine.

{head}{chr(10).join(lines)}

mAP@0.5 is COCO-style (101-point) over the six classes; DeepPCB P/R/F use IoU > 0.33 with a
same-class box at the operating threshold `thr`; template FA is the share of the 168 defect-free
templates with any detection at `thr`. Layer-pruned blocks: {dropped}.
Shipped: **{STAGE_TITLES[pick]}** (better validation mAP of the two fine-tunings)
to `models/deeppcb-detector/`.

Targets:

| target | met | value |
|---|---|---|
"""
        + "\n".join(f"| {t} | {'yes' if ok else '**no**'} | {v} |" for t, ok, v in checks)
        + f"""

Per class (test split):

{per_class}
![gamma histograms](img/detector/gamma_hist.png)
![PR baseline](img/detector/pr_baseline.png)
![PR shipped](img/detector/pr_{pick}.png)
"""
    )
    replace_section(Path(args.results), "detector", body)
    bench = f"""## Detector (DeepPCB), ONNX Runtime CPU, batch 1

Measured {date} on {mach};
`python bench/detector_table.py --config {cfg_rel}`; {args.ort_threads} ORT thread(s),
{args.latency_runs} runs per model after 10 warm-up runs, measured round-robin in 5 rounds so the load from
other jobs on the shared machine hits every model alike.

| model | input | ONNX MB | GFLOPs | p50 ms | p99 ms |
|---|---|---|---|---|---|
""" + "\n".join(
        f"| {STAGE_TITLES[s]} | {cfg['model']['img_size']} px | {r['onnx_mb']:.2f} | {r['gflops']:.2f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        for s, r in rows.items()
    )
    replace_section(Path(args.benchmarks), "detector", bench)


if __name__ == "__main__":
    sys.exit(main())
