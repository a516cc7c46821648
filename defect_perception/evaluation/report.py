"""The shift report: `report.json` (every figure), `index.html` (the same figures for people,
with PNG plots and a gallery), `parts.json` (one record per part: truth, decision, results;
the raw scores a later sweep or comparison needs) and `events.json` (what the collector saw).

Every number in the HTML carries `data-key="<json path, / separated>"` so a test (or a suspicious
reader) can check that the page shows what the JSON says."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

from defect_perception.evaluation import metrics, plots
from defect_perception.evaluation.sweep import raw_scores, sweep_all

SCHEMA = "defect_perception/evaluation_report/1"
GALLERY_LIMIT = 24


def build_report(meta: dict, parts: list[dict], join: dict, *, do_sweep: bool = False,
                 cards: dict[str, dict] | None = None, error: str | None = None) -> dict:
    figures = metrics.score(parts)
    truths = [(p.get("truth") or {}).get("label") for p in parts]
    counts = dict(join, good=truths.count("pass"), defective=truths.count("reject"))
    checks = {
        "all_frames_seen": join["seen"] == join["frames"],
        "seen_equals_decided": join["seen"] == join["decided"],
        "every_frame_decided": join["decided"] == join["frames"],
        "no_unmatched_decisions": join["unmatched_decisions"] == 0,
        "labels_present": join["labelled"] > 0,
    }
    problems = [k for k in ("all_frames_seen", "seen_equals_decided", "every_frame_decided") if not checks[k]]
    if error is None and problems:
        error = ("incomplete replay: " + ", ".join(problems) + f" (frames {join['frames']}, seen "
                 f"{join['seen']}, decided {join['decided']}; undecided indices "
                 f"{join['undecided_indices'][:10]})")
    report = {"schema": SCHEMA, "complete": error is None, "error": error, "checks": checks,
              "meta": meta, "counts": counts, **figures, "sweep": None, "gallery": {}, "figures": {}}
    if do_sweep:
        report["sweep"] = sweep_all(parts, cards)
    return report


def _key_stages(samples: dict[str, list[float]]) -> dict[str, list[float]]:
    """The histograms worth a panel (inference, per-node total, sorter, end to end); the
    table lists every stage."""
    keep = {k: v for k, v in samples.items() if k.split(".", 1)[0] in ("sorter", "line")
            or k.endswith((".infer", ".total"))}
    return keep or samples


def _gallery_parts(parts: list[dict]) -> dict[str, list[dict]]:
    esc = [p for p in parts if p.get("decision") and (p.get("truth") or {}).get("label") == "reject"
           and p["decision"]["verdict"] == "pass"]
    frj = [p for p in parts if p.get("decision") and (p.get("truth") or {}).get("label") == "pass"
           and p["decision"]["verdict"] == "reject"]
    return {"escapes": esc, "false_rejects": frj}


def write_report(out_dir: str | Path, report: dict, parts: list[dict], events: dict | None = None,
                 recording: tuple[str, str] | None = None, gallery_limit: int = GALLERY_LIMIT,
                 cards: dict[str, dict] | None = None) -> Path:
    """Write JSON, figures, gallery and HTML into out_dir; returns the HTML path.
    `recording` = (bag path, image topic) to draw gallery frames from; `cards` the sources'
    model cards (pass classes for the stored raw scores)."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figs = {"confusion": plots.confusion_png(report["confusion"], out / "figures" / "confusion.png"),
            "latency": plots.latency_png(_key_stages(metrics.latency_samples(parts)),
                                         out / "figures" / "latency.png")}
    if report.get("sweep"):
        figs["sweep"] = plots.sweep_png(report["sweep"], out / "figures" / "sweep.png")
    report["figures"] = {k: str(v.relative_to(out)) for k, v in figs.items()}
    gal = _gallery_parts(parts)
    report["gallery"] = {k: [] for k in gal}
    report["gallery"]["total"] = {k: len(v) for k, v in gal.items()}
    wanted = {p["index"] for v in gal.values() for p in v[:gallery_limit]}
    if wanted and recording:
        from defect_perception.evaluation.gallery import write_thumb
        from defect_perception.evaluation.recording import read_frames

        imgs = read_frames(recording[0], recording[1], wanted)
        for kind, ps in gal.items():
            for p in ps[:gallery_limit]:
                if p["index"] in imgs:
                    f = write_thumb(imgs[p["index"]], p, out / "gallery" / f"{kind}_{p['index']:06d}.png")
                    report["gallery"][kind].append({"index": p["index"], "stamp_ns": p["stamp_ns"],
                                                    "file": str(f.relative_to(out))})
    (out / "parts.json").write_text(json.dumps(parts, indent=1) + "\n")
    if events is not None:
        (out / "events.json").write_text(json.dumps(events) + "\n")
    if report.get("sweep"):
        (out / "scores.json").write_text(json.dumps(raw_scores(parts, cards), indent=1) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    page = out / "index.html"
    page.write_text(render_html(report))
    return page


def write_failure(out_dir: str | Path, meta: dict, error: str) -> Path:
    """A report that says plainly it is NOT a result: complete=false and the error."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema": SCHEMA, "complete": False, "error": error, "meta": meta}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    page = out / "index.html"
    page.write_text(_page("Evaluation FAILED", f"<p class='bad' data-key='error'>{html.escape(error)}</p>"
                          + _meta_html(meta)))
    return page


# --------------------------------------------------------------------------- HTML
CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}
.gal{display:flex;flex-wrap:wrap;gap:8px}.gal figure{margin:0}.gal img{max-width:360px;border:1px solid #999}
code{background:#f4f4f4;padding:1px 3px}"""


def _v(key: str, value, kind: str = "num") -> str:
    if value is None:
        text = "-"
    elif kind == "pct":
        text = f"{100 * value:.2f}%"
    elif kind == "ms":
        text = f"{value:.2f}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return f"<span data-key='{html.escape(key)}'>{html.escape(text)}</span>"


def _page(title: str, body: str) -> str:
    script = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
              "const ok=im.filter(i=>i.complete&&i.naturalWidth>0).length;"
              "document.title='rendered '+ok+'/'+im.length+' images';});</script>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{script}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _tr(head: str, *cells: str, cls: str = "") -> str:
    tds = "".join(f"<td class='{cls}'>{c}</td>" if cls else f"<td>{c}</td>" for c in cells)
    return f"<tr><th class='l'>{head}</th>{tds}</tr>"


def _th(*names: str) -> str:
    return "<tr>" + "".join(f"<th class='l'>{n}</th>" if i == 0 else f"<th>{n}</th>"
                            for i, n in enumerate(names)) + "</tr>"


def _rate_cells(key: str, x: dict) -> tuple[str, str, str]:
    return (f"{_v(key + '/k', x['k'])} / {_v(key + '/n', x['n'])}", _v(key + "/rate", x["rate"], "pct"),
            f"{_v(key + '/ci95/0', x['ci95'][0], 'pct')} - {_v(key + '/ci95/1', x['ci95'][1], 'pct')}")


def _meta_html(meta: dict) -> str:
    sw = meta.get("software", {})
    commit = (sw.get("git_commit") or "unknown") + (" (with local changes)" if sw.get("git_dirty") else "")
    rows = [("recording", meta.get("recording")), ("image topic", meta.get("image_topic")),
            ("labels", meta.get("labels_source")), ("config", meta.get("config_file")),
            ("config sha256", meta.get("config_hash")), ("software version", sw.get("package")),
            ("git commit", commit), ("replay", meta.get("pacing")), ("started", meta.get("started")),
            ("duration", f"{meta['duration_s']:.1f} s" if meta.get("duration_s") is not None else None),
            ("command", meta.get("command"))]
    body = "".join(f"<tr><th class='l'>{html.escape(k)}</th><td class='l'>{html.escape(str(v))}</td></tr>"
                   for k, v in rows if v is not None)
    return f"<h2>Setup</h2><table>{body}</table>"


def _img(fig: dict, key: str, alt: str) -> str:
    return f"<img src='{fig[key]}' alt='{alt}'>" if key in fig else ""


def render_html(r: dict) -> str:
    ok = r["complete"]
    status = ("<p class='ok'>COMPLETE: every recorded frame was seen and decided.</p>" if ok else
              f"<p class='bad'>NOT COMPLETE: {html.escape(str(r.get('error')))}</p>")
    n_fs = r["failsafe"]["count"]
    if n_fs:
        status += (f"<p class='bad'>WARNING: {n_fs} of {r['counts']['decided']} parts were decided (partly) "
                   "by a fail-safe, not by a model; see Fail-safe decisions.</p>")
    c = r["counts"]
    counts = "".join(_tr(k, _v("counts/" + k, c.get(k))) for k in (
        "frames", "seen", "decided", "labelled", "good", "defective", "decisions_received",
        "unmatched_decisions", "duplicate_decisions"))
    checks = "".join(_tr(k, "yes" if v else "NO", cls="ok" if v else "bad") for k, v in r["checks"].items())
    conf = _th("truth \\ decision", *metrics.VERDICTS, "total")
    for t, name in (("pass", "good"), ("reject", "defective"), ("unlabelled", "unlabelled")):
        row = r["confusion"][t]
        cells = [_v(f"confusion/{t}/{v}", row[v]) for v in metrics.VERDICTS]
        conf += _tr(name, *cells, str(sum(row.values())))
    rates = _th("rate", "k / n", "rate", "95% CI (Wilson)")
    for k, desc in (("escape", "escape (defective passed)"), ("false_reject", "false reject (good rejected)"),
                    ("review", "review (manual bin)"), ("accuracy", "accuracy (labelled parts)")):
        rates += _tr(desc, *_rate_cells(f"rates/{k}", r["rates"][k]))
    recall = "".join(_tr(html.escape(t), *_rate_cells(f"per_type_recall/{t}", x))
                     for t, x in r["per_type_recall"].items())
    recall = (f"<table>{_th('defect type', 'caught / n', 'recall', '95% CI')}{recall}</table>" if recall
              else "<p>No defect types in the labels.</p>")
    lat = _th("stage", "n", "p50 ms", "p99 ms", "max ms") + "".join(
        _tr(html.escape(k), _v(f"latency_ms/{k}/n", x["n"]),
            *(_v(f"latency_ms/{k}/{q}", x[q], "ms") for q in ("p50", "p99", "max")))
        for k, x in r["latency_ms"].items())
    fs = r["failsafe"]
    fs_rows = "".join(_tr(html.escape(k), str(n)) for k, n in list(fs["by_reason"].items())[:30])
    fs_html = (f"<p>{_v('failsafe/count', fs['count'])} parts decided (partly) by a fail-safe: the sorter's "
               "(late, missing or malformed results) or a node's (no model, bad frame, model error, "
               "skipped frame).</p>"
               + (f"<table>{_th('reason', 'parts')}{fs_rows}</table>" if fs_rows else ""))
    models = "".join(_tr(html.escape(src), html.escape(str(m["name"])),
                         f"<code>{html.escape(str(m['sha256']))}</code>", cls="l")
                     for src, ms in r["models"].items() for m in ms)
    models = (f"<table>{_th('source', 'model', 'sha256')}{models}</table>" if models
              else "<p>No model information in the results.</p>")
    fig = r.get("figures", {})
    sweep_html = ""
    if r.get("sweep"):
        rows = ""
        for src, sw in r["sweep"].items():
            op, ze = sw.get("operating") or {}, sw.get("zero_escape") or {}
            k = f"sweep/{src}"
            rows += _tr(html.escape(src), str(sw["n"]), _v(k + "/operating/threshold", op.get("threshold")),
                        _v(k + "/operating/escape", op.get("escape"), "pct"),
                        _v(k + "/operating/false_reject", op.get("false_reject"), "pct"),
                        _v(k + "/zero_escape/threshold", ze.get("threshold")),
                        _v(k + "/zero_escape/false_reject", ze.get("false_reject"), "pct"))
        sweep_html = ("<h2>Threshold sweep</h2><p>From stored raw scores (no inference re-run). A part is "
                      "rejected when its score is at or above the threshold. The zero-escape threshold is "
                      "measured on THIS recording: confirm it on other data before using it.</p><table>"
                      + _th("source", "parts", "operating threshold", "escape", "false reject",
                            "zero-escape threshold", "its false reject")
                      + rows + "</table>" + _img(fig, "sweep", "threshold sweep"))
    gallery = ""
    for kind, title in (("escapes", "Escapes (defective parts passed)"),
                        ("false_rejects", "False rejects (good parts rejected)")):
        items = r.get("gallery", {}).get(kind, [])
        total = r.get("gallery", {}).get("total", {}).get(kind, 0)
        gallery += f"<h3>{title}: {_v(f'gallery/total/{kind}', total)}</h3>"
        if total > len(items):
            gallery += f"<p>Showing {len(items)} of {total}; all are listed in parts.json.</p>"
        gallery += "<div class='gal'>" + "".join(
            f"<figure><img src='{html.escape(g['file'])}' alt='part {g['index']}'><figcaption>part "
            f"{g['index']} (stamp {g['stamp_ns']})</figcaption></figure>" for g in items) + "</div>"
    body = (status + "<h2>Parts</h2><table>" + counts + "</table><table>" + checks + "</table>"
            + "<h2>Decisions vs labels</h2><table>" + conf + "</table>"
            + _img(fig, "confusion", "confusion matrix")
            + "<h2>Rates</h2><table>" + rates + "</table>"
            "<p>Escape = defective part decided pass; false reject = good part decided reject; "
            "review parts go to the manual bin and count as neither.</p>"
            + "<h2>Recall per defect type</h2>" + recall
            + "<h2>Latency per stage</h2><table>" + lat + "</table>"
            + _img(fig, "latency", "latency histograms")
            + "<h2>Fail-safe decisions</h2>" + fs_html
            + "<h2>Models</h2>" + models + sweep_html + "<h2>Gallery</h2>" + gallery
            + _meta_html(r.get("meta", {})))
    return _page("Line evaluation report" + ("" if ok else " (NOT COMPLETE)"), body)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
