"""PNG plots drawn from a summary dict (never from the raw table).

Plots are a pure function of the JSON report, so `--json` output can be re-plotted later and
the HTML report and `--plots DIR` show exactly the same numbers. matplotlib is imported inside
``make_plots`` (the ``report`` extra), with the Agg backend and the object-oriented ``Figure``
API: no display, no pyplot global state.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.errors import UserError

SIZE = (6.4, 3.6)
DPI = 100


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _hist_items(hist: dict[str, int]) -> list[tuple[int, int]]:
    return sorted((int(k), v) for k, v in hist.items())


def score_by_position(rep: dict[str, Any]) -> bytes | None:
    rows = rep.get("scores", {}).get("by_position") or []
    if not rows:
        return None
    fig, ax = _figure()
    x = list(range(len(rows)))
    ax.fill_between(x, [r["p10"] for r in rows], [r["p90"] for r in rows], alpha=0.25,
                    label="p10–p90")
    ax.plot(x, [r["mean"] for r in rows], marker="o", label="mean score")
    ax.plot(x, [r["below_threshold"] for r in rows], marker="x", linestyle="--",
            label="share below threshold")
    ax.set_xticks(x, [r["position"] for r in rows])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step position (0 = first step)")
    ax.set_ylabel("score")
    ax.set_title("Step score by position")
    ax.legend(fontsize=8)
    return _png(fig)


def first_error_histogram(rep: dict[str, Any]) -> bytes | None:
    series = []
    agr = rep.get("agreement") or {}
    if len(agr) == 1:  # judge vs labels on the same compared rows
        judge, a = next(iter(agr.items()))
        series = [(judge, a["first_error_judge"]), ("reference labels", a["first_error_reference"])]
    else:
        if "first_error" in rep:
            series.append(("judge", rep["first_error"]))
        if "reference" in rep:
            series.append(("reference labels", rep["reference"]["first_error"]))
    if not series:
        return None
    fig, ax = _figure()
    positions = sorted({p for _, fe in series for p, _ in _hist_items(fe["histogram"])})
    labels = ["none"] + [str(p) for p in positions]
    width = 0.8 / len(series)
    for k, (name, fe) in enumerate(series):
        hist = dict(_hist_items(fe["histogram"]))
        counts = [fe["none"]] + [hist.get(p, 0) for p in positions]
        ax.bar([i + k * width for i in range(len(labels))], counts, width=width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_xlabel("first error step (none = no step below threshold)")
    ax.set_ylabel("solutions")
    ax.set_title("First-error position")
    ax.legend(fontsize=8)
    return _png(fig)


def calibration(rep: dict[str, Any]) -> bytes | None:
    judges = {j: a for j, a in (rep.get("agreement") or {}).items() if a["calibration"]["bins"]}
    if not judges:
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for judge, agr in judges.items():
        bins = agr["calibration"]["bins"]
        ax.plot([b["mean_score"] for b in bins], [b["mean_reference"] for b in bins], marker="o",
                label=f"{judge} (ECE {agr['calibration']['ece']:.3f})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("judge score (bin mean)")
    ax.set_ylabel("reference label (bin mean)")
    ax.set_title("Calibration against reference labels")
    ax.legend(fontsize=8)
    return _png(fig)


def cost_per_1k_steps(rep: dict[str, Any]) -> bytes | None:
    judges = rep.get("judges") or []
    if not judges:
        return None
    fig, ax = _figure()
    names = [j["judge"] for j in judges]
    values = [j["cost_per_1k_steps"] or 0.0 for j in judges]
    bars = ax.bar(range(len(names)), values)
    ax.bar_label(bars, labels=[f"${v:.4f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylabel("USD per 1,000 steps")
    ax.set_title("Cost per 1k labeled steps")
    return _png(fig)


def step_counts(rep: dict[str, Any]) -> bytes | None:
    hist = (rep.get("steps") or rep.get("chosen_steps") or {}).get("histogram")
    if not hist:
        return None
    fig, ax = _figure()
    items = _hist_items(hist)
    ax.bar([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("steps per solution")
    ax.set_ylabel("solutions")
    ax.set_title("Steps per solution")
    return _png(fig)


def margin_histogram(rep: dict[str, Any]) -> bytes | None:
    hist = (rep.get("margin") or {}).get("histogram")
    if not hist or not sum(hist["counts"]):
        return None
    fig, ax = _figure()
    edges = hist["edges"]
    ax.stairs(hist["counts"], edges, fill=True)
    ax.axvline(0.0, color="red", linestyle=":")
    ax.set_xlabel("chosen reward − rejected reward (clipped to [−1, 1])")
    ax.set_ylabel("pairs")
    ax.set_title("Pair reward margin")
    return _png(fig)


def a_vs_b(comp: dict[str, Any]) -> bytes | None:
    """Each compared step as a point: judge A's score against judge B's."""
    pts = comp.get("scatter") or {}
    if not pts.get("a"):
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="A = B")
    ax.scatter(pts["a"], pts["b"], s=8, alpha=0.35, edgecolors="none")
    thr = comp.get("threshold")
    if thr is not None:
        ax.axvline(thr, color="red", linestyle=":", linewidth=0.8)
        ax.axhline(thr, color="red", linestyle=":", linewidth=0.8)
    name = lambda key: ", ".join(map(str, comp.get(key) or [])) or key  # noqa: E731
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"A: {name('judges_a')}")
    ax.set_ylabel(f"B: {name('judges_b')}")
    shown = len(pts["a"])
    ax.set_title(f"Step scores, A vs B ({shown} of {pts['of']} steps)" if shown < pts["of"]
                 else f"Step scores, A vs B ({shown} steps)")
    ax.legend(fontsize=8)
    return _png(fig)


PLOTS: dict[str, list[tuple[str, Callable[[dict[str, Any]], bytes | None]]]] = {
    "step_scores": [
        ("score_by_position", score_by_position),
        ("first_error", first_error_histogram),
        ("calibration", calibration),
        ("cost_per_1k_steps", cost_per_1k_steps),
    ],
    "responses": [("steps_per_solution", step_counts), ("first_error", first_error_histogram)],
    "pairs": [("margin", margin_histogram), ("steps_per_solution", step_counts)],
}


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """name → PNG bytes for every plot the report has data for (two inputs: ``a_``/``b_``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UserError("plots need matplotlib: pip install 'stepwise-dpo[report]'") from exc
    if report.get("kind") == "comparison":
        out = {}
        png = a_vs_b(report["comparison"])
        if png is not None:
            out["a_vs_b"] = png
        for prefix, rep in zip(("a_", "b_"), report["inputs"], strict=True):
            out.update({prefix + k: v for k, v in make_plots(rep).items()})
        return out
    out = {}
    for name, fn in PLOTS.get(report["kind"], []):
        png = fn(report)
        if png is not None:
            out[name] = png
    return out


def write_plots(plots: dict[str, bytes], folder: str | Path) -> list[Path]:
    """Write each plot as ``NAME.png`` into ``folder`` (each file atomically)."""
    from schemas.atomic import atomic_open

    folder = Path(folder)
    paths = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in plots.items():
            path = folder / f"{name}.png"
            with atomic_open(path, "wb") as fh:
                fh.write(png)
            paths.append(path)
    except OSError as exc:
        raise UserError(f"--plots {folder}: cannot write the plots ({exc.strerror or exc})") from exc
    return paths
