"""The report as rich tables on the terminal (``--json`` prints the same data for scripts)."""

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
        text = c in ("judge", "fp", "error", "response_id")
        t.add_column(c, justify="left" if text else "right", overflow="fold", min_width=8 if text else None)
    for r in rows:
        t.add_row(*[Text(_f(x)) for x in r])
    return t


def _counts(d: dict[str, int]) -> str:
    from rich.markup import escape

    return escape(", ".join(f"{k}: {v}" for k, v in d.items())) or "-"


def print_summary(console: Any, rep: dict[str, Any]) -> None:
    from rich.markup import escape

    console.print(f"[bold]{escape(rep['path'])}[/]  kind={rep['kind']}  files={rep['files']}  rows={rep['rows']}")
    if "status" in rep:
        console.print(f"status: {_counts(rep['status'])}")
    if "sources" in rep:
        console.print(f"sources: {_counts(rep['sources'])}")
    if "strategies" in rep:
        console.print(f"strategies: {_counts(rep['strategies'])}")
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
        console.print(_table("judges", ["judge", "fp", "rows", "ok", "err", "steps", "tokens",
                                        "cost $", "$/1k steps"],
                             [[j["judge"], j["judge_fingerprint"][:8], j["rows"], j["ok"], j["error"],
                               j["steps"], j["input_tokens"] + j["output_tokens"], j["cost_usd"],
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
    for judge, agr in (rep.get("agreement") or {}).items():
        pb = agr["processbench"]
        console.print(_table(
            f"agreement with reference labels: {judge} (threshold {agr['threshold']})",
            ["compared", "len mismatch", "steps", "step acc", "AUC", "PB acc err", "PB acc ok",
             "PB F1", "ECE"],
            [[agr["compared"], agr["length_mismatch"], agr["steps"], agr["step_accuracy"],
              agr["step_auc"], pb["error_accuracy"], pb["correct_accuracy"], pb["f1"],
              agr["calibration"]["ece"]]]))
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
    console.print(_table(
        f"{', '.join(map(str, c['judges_a']))} vs {', '.join(map(str, c['judges_b']))}",
        ["joined", "len mismatch", "steps", "step agree", "pearson", "spearman", "mean |diff|",
         "first err agree", "responses differ"],
        [[c["joined"], c["length_mismatch"], c["steps_compared"], c["step_agreement"], c["pearson"],
          c["spearman"], c["mean_abs_diff"], c["first_error_agreement"], c["responses_disagreeing"]]]))
    if c["disagreements"]:
        console.print(_table("largest disagreements", ["response_id", "first err A", "first err B",
                                                       "steps differ", "max |diff|"],
                             [[d["response_id"], d["first_error_a"], d["first_error_b"],
                               d["steps_disagreeing"], d["max_abs_diff"]] for d in c["disagreements"]]))
