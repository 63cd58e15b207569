"""The report as rich tables on the terminal (``--json`` prints the same data for scripts).

Every table fits an 80-column terminal without breaking a header or a number across lines:
wide summaries (agreement, A-vs-B comparison) are printed one metric per row, and the
per-judge table is split in two (counts, then tokens and cost).
"""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(title=escape(title), title_justify="left", show_edge=False)
    for c in columns:
        text = c in ("judge", "fp", "error", "response_id", "metric")
        t.add_column(c, justify="left" if text else "right", overflow="fold")
    for r in rows:
        t.add_row(*[Text(_f(x)) for x in r])
    return t


def _vertical(title: str, names: list[str], rows: list[tuple[str, list[Any]]]) -> Any:
    """A metric-per-row table: ``rows`` are (metric, one value per name in ``names``)."""
    return _table(title, ["metric", *names], [[label, *values] for label, values in rows])


def _counts(d: dict[str, int]) -> str:
    from rich.markup import escape

    return escape(", ".join(f"{k}: {v}" for k, v in d.items())) or "-"


def print_summary(console: Any, rep: dict[str, Any]) -> None:
    from rich.markup import escape

    console.print(f"[bold]{escape(rep['path'])}[/]  kind={rep['kind']}  files={rep['files']}  rows={rep['rows']}")
    if rep.get("superseded_rows"):
        console.print(f"[yellow]ignored {rep['superseded_rows']} superseded row(s)[/] (a killed run "
                      "labeled them again; the next `stepdpo label` run removes them)")
    if "status" in rep:
        console.print(f"status: {_counts(rep['status'])}")
    if "sources" in rep:
        console.print(f"sources: {_counts(rep['sources'])}")
    if "strategies" in rep:
        console.print(f"strategies: {_counts(rep['strategies'])}")
    made = rep.get("pairs_manifest") or {}
    if "aggregation" in made:
        console.print(f"rewards: {escape(str(made['aggregation']))} of the stored step scores; "
                      f"step threshold {made.get('step_threshold')}")
    if "tokens" in rep:
        tk = rep["tokens"]
        console.print(f"tokens: input {tk['input']}, output {tk['output']}, cached {tk['cached']}"
                      f"   cost: ${_f(rep['cost_usd'])}")
    if "steps" in rep:
        st = rep["steps"]
        pr = st["per_response"]
        console.print(f"steps: {st['total']} total; per solution mean {_f(pr.get('mean'))}, "
                      f"p50 {_f(pr.get('p50'))}, max {_f(pr.get('max'))}")
    for err in rep.get("top_errors", []):
        console.print(f"[red]error[/] x{err['count']}: {escape(str(err['error']))}")
    if rep.get("judges"):
        console.print(_table("judges", ["judge", "fp", "rows", "ok", "err", "steps"],
                             [[j["judge"], j["judge_fingerprint"][:8], j["rows"], j["ok"], j["error"],
                               j["steps"]] for j in rep["judges"]]))
        console.print(_table("judge cost", ["judge", "tokens", "cost $", "$/1k steps"],
                             [[j["judge"], j["input_tokens"] + j["output_tokens"], j["cost_usd"],
                               j["cost_per_1k_steps"]] for j in rep["judges"]]))
    if rep.get("scores", {}).get("by_position"):
        console.print(_table("score by step position", ["position", "steps", "mean", "p10", "p50", "p90",
                                                        "below thr"],
                             [[r["position"], r["count"], r["mean"], r["p10"], r["p50"], r["p90"],
                               r["below_threshold"]] for r in rep["scores"]["by_position"]]))
    fe = rep.get("first_error")
    ref = (rep.get("reference") or {}).get("first_error")
    if fe or ref:
        hj = (fe or {}).get("histogram", {})
        hr = (ref or {}).get("histogram", {})
        keys = sorted(set(hj) | set(hr), key=int)
        rows = [["none", (fe or {}).get("none", "-"), (ref or {}).get("none", "-")]]
        rows += [[k, hj.get(k, 0) if fe else "-", hr.get(k, 0) if ref else "-"] for k in keys]
        console.print(_table("first error position", ["step", "by judge", "by reference"], rows))
    agreement = rep.get("agreement") or {}
    if agreement:
        ags = list(agreement.values())
        pbs = [a["processbench"] for a in ags]
        console.print(_vertical(
            f"agreement with reference labels (threshold {ags[0]['threshold']})", list(agreement),
            [("responses compared", [a["compared"] for a in ags]),
             ("length mismatch", [a["length_mismatch"] for a in ags]),
             ("steps", [a["steps"] for a in ags]),
             ("step accuracy", [a["step_accuracy"] for a in ags]),
             ("step ROC AUC", [a["step_auc"] for a in ags]),
             ("ProcessBench acc, erroneous", [p["error_accuracy"] for p in pbs]),
             ("ProcessBench acc, correct", [p["correct_accuracy"] for p in pbs]),
             ("ProcessBench F1", [p["f1"] for p in pbs]),
             ("calibration ECE", [a["calibration"]["ece"] for a in ags])]))
    if "margin" in rep:
        m = rep["margin"]
        console.print(_table("reward margin (chosen − rejected)",
                             ["pairs", "mean", "min", "p10", "p50", "p90", "max", "≤ 0"],
                             [[m.get("count"), m.get("mean"), m.get("min"), m.get("p10"), m.get("p50"),
                               m.get("p90"), m.get("max"), m.get("nonpositive")]]))
        console.print(f"pairs with precomputed reference log-probs: {rep['with_ref_logps']}")


def print_report(console: Any, report: dict[str, Any]) -> None:
    if report.get("kind") != "comparison":
        print_summary(console, report)
        return
    for ab, rep in zip("AB", report["inputs"], strict=True):
        console.rule(f"input {ab}")
        print_summary(console, rep)
    c = report["comparison"]
    console.rule("A vs B")
    from rich.markup import escape

    console.print(f"A: {escape(', '.join(map(str, c['judges_a'])))}")
    console.print(f"B: {escape(', '.join(map(str, c['judges_b'])))}")
    console.print(_vertical(
        "agreement of A and B", ["A vs B"],
        [(label, [c[key]]) for label, key in (
            ("responses joined", "joined"), ("length mismatch", "length_mismatch"),
            ("steps compared", "steps_compared"), ("step agreement", "step_agreement"),
            ("pearson", "pearson"), ("spearman", "spearman"), ("mean |diff|", "mean_abs_diff"),
            ("first error agreement", "first_error_agreement"),
            ("responses disagreeing", "responses_disagreeing"))]))
    if c["disagreements"]:
        console.print(_table("largest disagreements", ["response_id", "first err A", "first err B",
                                                       "steps differ", "max |diff|"],
                             [[d["response_id"], d["first_error_a"], d["first_error_b"],
                               d["steps_disagreeing"], d["max_abs_diff"]] for d in c["disagreements"]]))
