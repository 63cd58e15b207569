"""One self-contained HTML report: summary tables, plots, browsable examples.

Everything is inline — CSS, a few lines of JS for the example filter, and the plots as base64
PNG data URIs — so the file can be mailed or opened on an air-gapped box and never reaches the
network. All text from the data is HTML-escaped (step text is user data).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_open
from schemas.errors import UserError

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:.8em;color:#555}
img.plot{width:640px;max-width:100%;border:1px solid #eee}
.s{padding:1px 4px;border-radius:3px;font-family:monospace;font-size:.85em}
.good{background:#c8f0c8}.mid{background:#fbeaa5}.bad{background:#f6b8b8}.none{background:#eee}
ol.steps{margin:.2em 0;padding-left:1.6em}ol.steps li{margin:.15em 0}
details summary{cursor:pointer}.muted{color:#777}
"""

JS = """
function filterExamples(){
  var q=document.getElementById('filter').value.toLowerCase();
  var rows=document.querySelectorAll('#examples tbody tr');var shown=0;
  rows.forEach(function(r){var ok=r.textContent.toLowerCase().indexOf(q)>=0;
    r.style.display=ok?'':'none';if(ok)shown++;});
  document.getElementById('shown').textContent=shown+' of '+rows.length;
}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False)
    return "" if x is None else str(x)


def _kv_table(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cls(score: float | None, threshold: float) -> str:
    if score is None:
        return "none"
    if score < threshold:
        return "bad"
    return "mid" if score < max(threshold, 0.8) else "good"


def _badge(score: float | None, threshold: float, prefix: str = "") -> str:
    text = "–" if score is None else f"{score:.2f}"
    return f"<span class='s {_cls(score, threshold)}'>{_e(prefix)}{text}</span>"


def _steps_html(steps: list[dict[str, Any]], threshold: float) -> str:
    items = []
    for s in steps:
        badges = _badge(s.get("score"), threshold)
        if "other" in s:
            badges += " " + _badge(s.get("other"), threshold, "B ")
        if s.get("reference") is not None:
            badges += " " + _badge(s["reference"], threshold, "ref ")
        items.append(f"<li>{badges} {_e(s['text'])}</li>")
    return f"<ol class='steps'>{''.join(items)}</ol>"


def _examples_html(exs: list[dict[str, Any]], threshold: float) -> str:
    if not exs:
        return "<p class='muted'>no examples match</p>"
    rows = []
    for i, ex in enumerate(exs, 1):
        ident = ex.get("response_id") or ex.get("pair_id")
        info = " ".join(f"{k}={ex[k]}" for k in ("judge", "status", "other_judge", "strategy",
                                                  "first_error", "reference_first_error")
                        if ex.get(k) is not None)
        if "steps" in ex:
            body = _steps_html(ex["steps"], threshold)
        else:
            body = (f"<b>prefix</b>{_steps_html([{'text': t} for t in ex['prefix_steps']], threshold)}"
                    f"<b>chosen</b> (reward {_e(_fmt(ex['chosen_reward']))})"
                    f"{_steps_html(ex['chosen'], threshold)}"
                    f"<b>rejected</b> (reward {_e(_fmt(ex['rejected_reward']))})"
                    f"{_steps_html(ex['rejected'], threshold)}")
        if ex.get("error"):
            body += f"<div class='bad'>error: {_e(ex['error'])}</div>"
        prompt = f"<details><summary>{_e(ex['prompt'][:120])}</summary>{_e(ex['prompt'])}</details>"
        rows.append(f"<tr><td>{i}</td><td><code>{_e(ident)}</code><br><span class='muted'>"
                    f"{_e(info)}</span></td><td>{prompt}{body}</td></tr>")
    return ("<p><input id='filter' placeholder='filter examples' oninput='filterExamples()'> "
            f"<span id='shown'>{len(exs)} of {len(exs)}</span></p>"
            "<table id='examples'><thead><tr><th>#</th><th>id</th><th>solution "
            "(score, reference)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _summary_html(rep: dict[str, Any]) -> str:
    basic = [(k, rep[k]) for k in ("path", "kind", "files", "rows", "status", "sources",
                                   "strategies", "cost_usd", "tokens", "with_ref_logps") if k in rep]
    parts = [_kv_table(basic)]
    if "steps" in rep:
        parts.append("<h3>Steps per solution</h3>" + _kv_table(
            [("total", rep["steps"]["total"])] + list(rep["steps"]["per_response"].items())))
    if rep.get("judges"):
        parts.append("<h3>Judges</h3>" + _table(rep["judges"], list(rep["judges"][0])))
    if rep.get("top_errors"):
        parts.append("<h3>Most common errors</h3>" + _table(rep["top_errors"], ["error", "count"]))
    if rep.get("scores", {}).get("by_position"):
        rows = rep["scores"]["by_position"]
        parts.append("<h3>Scores by step position</h3>" + _table(rows, list(rows[0])))
    for judge, agr in (rep.get("agreement") or {}).items():
        pb = agr["processbench"]
        parts.append(f"<h3>Agreement with reference labels — {_e(judge)}</h3>" + _kv_table([
            ("responses compared", agr["compared"]), ("length mismatch", agr["length_mismatch"]),
            ("not scored", agr["not_scored"]), ("steps", agr["steps"]),
            ("threshold", agr["threshold"]),
            ("step accuracy", agr["step_accuracy"]), ("step ROC AUC", agr["step_auc"]),
            ("ProcessBench accuracy, erroneous", pb["error_accuracy"]),
            ("ProcessBench accuracy, correct", pb["correct_accuracy"]),
            ("ProcessBench F1", pb["f1"]), ("calibration ECE", agr["calibration"]["ece"]),
        ]))
    for key in ("margin", "chosen_reward", "rejected_reward"):
        if key in rep:
            parts.append(f"<h3>{_e(key)}</h3>" + _kv_table(
                [(k, v) for k, v in rep[key].items() if k != "histogram"]))
    return "".join(parts)


def _manifests_html(report: dict[str, Any]) -> str:
    """The raw run manifests, last: long, and read only when digging into one run."""
    reps = report["inputs"] if report.get("kind") == "comparison" else [report]
    parts = [f"<h3>{_e(r['path'])}: run.json</h3><pre>{_e(json.dumps(r['run_manifest'], indent=2))}</pre>"
             for r in reps if r.get("run_manifest") is not None]
    return "<h2>Raw manifest</h2>" + "".join(parts) if parts else ""


def render(report: dict[str, Any], plots: dict[str, bytes], exs: list[dict[str, Any]],
           threshold: float) -> str:
    """The whole report as one HTML string."""
    if report.get("kind") == "comparison":
        comp = report["comparison"]
        title = "stepdpo inspect: " + " vs ".join(r["path"] for r in report["inputs"])
        summary = ("<h2>Comparison</h2>" + _kv_table(
            [(k, v) for k, v in comp.items() if k not in ("disagreements", "scatter")])
            + "<h3>Largest disagreements</h3>"
            + _table(comp["disagreements"], ["response_id", "first_error_a", "first_error_b",
                                             "steps_disagreeing", "max_abs_diff"])
            + "".join(f"<h2>Input {ab}</h2>{_summary_html(r)}"
                      for ab, r in zip("AB", report["inputs"], strict=True)))
    else:
        title = f"stepdpo inspect: {report['path']}"
        summary = "<h2>Summary</h2>" + _summary_html(report)
    figures = "".join(
        f"<figure><img class='plot' alt='{_e(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{_e(name)}</figcaption></figure>"
        for name, png in plots.items()
    )
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style><script>{JS}</script></head><body>"
        f"<h1>{_e(title)}</h1><p class='muted'>generated {now}; step threshold {threshold}</p>"
        f"{summary}<h2>Plots</h2><div class='plots'>{figures or '<p>no plots</p>'}</div>"
        f"<h2>Examples</h2>{_examples_html(exs, threshold)}{_manifests_html(report)}</body></html>"
    )


def write_report(path: str | Path, report: dict[str, Any], plots: dict[str, bytes],
                 exs: list[dict[str, Any]], threshold: float) -> Path:
    """Write the report atomically: a failed write leaves no partial file and no temp file."""
    path = Path(path)
    text = render(report, plots, exs, threshold)
    try:
        with atomic_open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise UserError(f"--html {path}: cannot write the report ({exc.strerror or exc})") from exc
    return path
