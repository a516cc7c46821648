"""Compare two evaluation reports of the same recording (two models, two configs): what
changed in the figures and which parts' decisions flipped, with their images."""
from __future__ import annotations

import html
import json
from pathlib import Path

from defect_perception.evaluation import EvaluationError
from defect_perception.evaluation.report import _page, _v

RATES = ("escape", "false_reject", "review", "accuracy")
_CLS = {"fixed": "ok", "broke": "bad"}


def load_run(path: str | Path) -> tuple[dict, list[dict]]:
    d = Path(path)
    if d.is_file():
        d = d.parent
    rj, pj = d / "report.json", d / "parts.json"
    if not rj.is_file():
        raise EvaluationError(f"{d}: no report.json (not an evaluate-line report folder)")
    report = json.loads(rj.read_text())
    if not report.get("complete"):
        raise EvaluationError(f"{rj}: report is not complete ({report.get('error')}); refusing to compare")
    if not pj.is_file():
        raise EvaluationError(f"{d}: no parts.json next to report.json")
    return report, json.loads(pj.read_text())


def _correct(truth: str | None, verdict: str | None) -> bool | None:
    if truth is None or verdict is None:
        return None
    return verdict == truth


def compare(a_dir: str | Path, b_dir: str | Path) -> dict:
    ra, pa = load_run(a_dir)
    rb, pb = load_run(b_dir)
    key = "header_stamp_ns"
    ka = {p[key]: p for p in pa}
    kb = {p[key]: p for p in pb}
    common = [k for k in ka if k in kb]
    if not common:
        raise EvaluationError(f"{a_dir} and {b_dir} share no parts: were they made from the same recording?")
    flips = []
    for k in common:
        a, b = ka[k], kb[k]
        va, vb = (a.get("decision") or {}).get("verdict"), (b.get("decision") or {}).get("verdict")
        if va == vb:
            continue
        truth = (b.get("truth") or a.get("truth") or {}).get("label")
        ca, cb = _correct(truth, va), _correct(truth, vb)
        change = "fixed" if cb and not ca else "broke" if ca and not cb else "changed"
        flips.append({"index": b["index"], "header_stamp_ns": k, "truth": truth, "a": va, "b": vb,
                      "change": change, "reason_a": (a.get("decision") or {}).get("reason"),
                      "reason_b": (b.get("decision") or {}).get("reason")})
    meta_a, meta_b = ra.get("meta", {}), rb.get("meta", {})
    return {
        "a": str(a_dir), "b": str(b_dir), "common_parts": len(common),
        "only_in_a": len(ka) - len(common), "only_in_b": len(kb) - len(common),
        "same_recording": meta_a.get("recording") == meta_b.get("recording"),
        "config_hash": {"a": meta_a.get("config_hash"), "b": meta_b.get("config_hash")},
        "models": {"a": ra.get("models"), "b": rb.get("models")},
        "software": {"a": meta_a.get("software"), "b": meta_b.get("software")},
        "rates": {k: {"a": ra["rates"][k]["rate"], "b": rb["rates"][k]["rate"]} for k in RATES},
        "flipped": flips,
        "flip_counts": {c: sum(f["change"] == c for f in flips) for c in ("fixed", "broke", "changed")},
        "_recording": (meta_b.get("recording"), meta_b.get("image_topic")),
        "_parts_b": {f["index"]: kb[f["header_stamp_ns"]] for f in flips},
    }


def write_compare(out_dir: str | Path, cmp: dict, gallery_limit: int = 48) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec, topic = cmp.pop("_recording")
    parts_b = cmp.pop("_parts_b")
    files: dict[int, str] = {}
    wanted = {f["index"] for f in cmp["flipped"][:gallery_limit]}
    if wanted and rec and topic and Path(rec).exists():
        from defect_perception.evaluation.gallery import write_thumb
        from defect_perception.evaluation.recording import read_frames

        for idx, img in read_frames(rec, topic, wanted).items():
            f = write_thumb(img, parts_b[idx], out / "flipped" / f"part_{idx:06d}.png")
            files[idx] = str(f.relative_to(out))
    for f in cmp["flipped"]:
        f["file"] = files.get(f["index"])
    (out / "compare.json").write_text(json.dumps(cmp, indent=2) + "\n")
    rates = "".join(f"<tr><th class='l'>{k}</th><td>{_v(f'rates/{k}/a', v['a'], 'pct')}</td>"
                    f"<td>{_v(f'rates/{k}/b', v['b'], 'pct')}</td></tr>" for k, v in cmp["rates"].items())
    rows = "".join(
        f"<tr><td>{f['index']}</td><td>{f['truth']}</td><td>{f['a']}</td><td>{f['b']}</td>"
        f"<td class='{_CLS.get(f['change'], '')}'>{f['change']}"
        f"</td><td class='l'>{html.escape(str(f['reason_b'] or ''))}</td></tr>" for f in cmp["flipped"])
    imgs = "".join(f"<figure><img src='{f['file']}' alt='part {f['index']}'><figcaption>part {f['index']}: "
                   f"{f['a']} &rarr; {f['b']} ({f['change']})</figcaption></figure>"
                   for f in cmp["flipped"] if f.get("file"))
    same = ("" if cmp["same_recording"] else
            "<p class='bad'>The two reports come from different recordings.</p>")
    body = (f"<p>A: <code>{html.escape(cmp['a'])}</code><br>B: <code>{html.escape(cmp['b'])}</code></p>{same}"
            f"<p>config sha256 A {cmp['config_hash']['a']}<br>config sha256 B {cmp['config_hash']['b']}</p>"
            f"<table><tr><th class='l'>rate</th><th>A</th><th>B</th></tr>{rates}</table>"
            f"<h2>Decisions that flipped: {_v('flipped/count', len(cmp['flipped']))} of {cmp['common_parts']}"
            f"</h2><p>fixed {cmp['flip_counts']['fixed']}, broke {cmp['flip_counts']['broke']}, other "
            f"{cmp['flip_counts']['changed']}</p><table><tr><th>part</th><th>truth</th><th>A</th><th>B</th>"
            f"<th>change</th><th class='l'>reason (B)</th></tr>{rows}</table><div class='gal'>{imgs}</div>")
    page = out / "compare.html"
    page.write_text(_page("Evaluation comparison", body))
    return page
