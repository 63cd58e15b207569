"""`stepdpo inspect`: summaries, agreement metrics against hand counts and brute-force oracles."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pyarrow as pa
import pytest

from labeler.inspection import agreement, stats
from schemas import PAIRS, RESPONSES, first_error
from stepdpo.cli import main
from stepdpo.commands.inspect import build_report
from tests.inspect_fixtures import score_rows, synthetic_run, write_rows, write_run

# The hand-worked example (threshold 0.5): (id, reference labels, judge scores).
HAND = [
    ("s1", [1, 1, 1], [0.9, 0.8, 0.7]),  # ref first error -1, judge -1: match (correct)
    ("s2", [1, 1], [0.9, 0.3]),  # ref -1, judge 1: miss (correct)
    ("s3", [1, 0, 0], [0.8, 0.2, 0.6]),  # ref 1, judge 1: match (erroneous)
    ("s4", [0, 1], [0.6, 0.4]),  # ref 0, judge 1: miss (erroneous)
    ("s5", [1, 1, 0], [0.7, 0.9, 0.1]),  # ref 2, judge 2: match (erroneous)
    ("s6", [1, 0.5, 1, 1], [0.9, 0.5, 0.6, 0.95]),  # 0.5 is not < 0.5: ref -1, judge -1: match
]


def _cli_json(capsys, *argv) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_hand_worked_six_solutions(tmp_path, capsys):
    path = write_rows(tmp_path / "hand.parquet", score_rows(HAND))
    rep = _cli_json(capsys, path)
    agr = rep["agreement"]["fake:judge"]
    assert agr["compared"] == 6 and agr["steps"] == 17
    # Step accuracy: steps agreeing on (score >= .5) == (label >= .5):
    # s1 3/3, s2 1/2, s3 2/3 (0.6 vs 0), s4 0/2, s5 3/3, s6 4/4 -> 13/17.
    assert agr["step_accuracy"] == pytest.approx(13 / 17, abs=1e-6)
    # AUC: 13 positive steps (label >= .5), 4 negatives (0.2, 0.6, 0.6, 0.1). Negatives below each
    # positive, ties half: four 0.9s 4 each=16, two 0.8s 8, two 0.7s 8, 0.3 2, 0.4 2, 0.5 2,
    # 0.6 2+0.5+0.5=3, 0.95 4 -> 45 of 13*4=52 pairs.
    assert agr["step_auc"] == pytest.approx(45 / 52, abs=1e-6)
    pb = agr["processbench"]
    # Erroneous s3 s4 s5: 2 of 3 exact; correct s1 s2 s6: 2 of 3; F1 = harmonic(2/3, 2/3).
    assert (pb["erroneous"], pb["correct"]) == (3, 3)
    assert pb["error_accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert pb["correct_accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert pb["f1"] == pytest.approx(2 / 3, abs=1e-6)
    # Judge first errors: -1, 1, 1, 1, 2, -1; reference: -1, -1, 1, 0, 2, -1.
    assert rep["first_error"]["none"] == 2 and rep["first_error"]["histogram"] == {"1": 3, "2": 1}
    assert rep["reference"]["first_error"] == {"none": 3, "histogram": {"0": 1, "1": 1, "2": 1}}
    assert agr["first_error_judge"] == {"none": 2, "histogram": {"1": 3, "2": 1}}
    assert agr["first_error_reference"] == rep["reference"]["first_error"]
    # Position 0: 0.9 .9 .8 .6 .7 .9 -> mean 0.8; position 1: .8 .3 .2 .4 .9 .5 -> 3.1/6, 3 below.
    pos = {p["position"]: p for p in rep["scores"]["by_position"]}
    assert pos["0"]["mean"] == pytest.approx(0.8) and pos["0"]["below_threshold"] == 0
    assert pos["1"]["mean"] == pytest.approx(3.1 / 6, abs=1e-6) and pos["1"]["below_threshold"] == 0.5
    assert pos["2"]["count"] == 4 and pos["3"]["count"] == 1
    assert rep["steps"]["total"] == 17 and rep["steps"]["histogram"] == {"2": 2, "3": 3, "4": 1}
    # Tokens and cost: 6 rows x (100 in, 10 out, $0.001); cost per 1k steps = 1000 * 0.006 / 17.
    judge = rep["judges"][0]
    assert (judge["rows"], judge["ok"], judge["input_tokens"], judge["output_tokens"]) == (6, 6, 600, 60)
    assert judge["cost_per_1k_steps"] == pytest.approx(6 / 17, abs=1e-5)


def test_reference_labels_give_f1_one_and_inverted_give_zero(tmp_path, capsys):
    exact = write_run(tmp_path / "exact.parquet", 400, mode="exact", seed=1)
    rep = _cli_json(capsys, exact)["agreement"]["fake:judge"]
    assert rep["processbench"]["erroneous"] > 50 and rep["processbench"]["correct"] > 50
    assert rep["processbench"]["f1"] == 1.0
    assert rep["step_accuracy"] == 1.0 and rep["step_auc"] == 1.0 and rep["calibration"]["ece"] == 0.0

    inverted = write_run(tmp_path / "inverted.parquet", 400, mode="inverted", neutral=0.0, seed=1)
    rep = _cli_json(capsys, inverted)["agreement"]["fake:judge"]
    pb = rep["processbench"]
    assert pb["error_accuracy"] == 0.0 and pb["correct_accuracy"] == 0.0 and pb["f1"] == 0.0
    assert rep["step_accuracy"] == 0.0 and rep["step_auc"] == 0.0


def test_json_output_keys(tmp_path, capsys):
    path = write_run(tmp_path / "run.parquet", 50, error_rate=0.1, seed=3)
    rep = _cli_json(capsys, path)
    assert set(rep) == {
        "path", "kind", "files", "rows", "status", "top_errors", "judges", "tokens", "cost_usd",
        "steps", "scores", "first_error", "reference", "agreement",
    }
    assert rep["kind"] == "step_scores" and rep["rows"] == 50
    assert rep["status"]["ok"] + rep["status"]["error"] == 50 and rep["status"]["error"] > 0
    assert rep["top_errors"][0]["error"] == "HTTP 500 from judge"
    assert set(rep["agreement"]["fake:judge"]) == {
        "rows", "labeled", "compared", "not_scored", "length_mismatch", "threshold", "steps",
        "step_accuracy", "step_auc", "processbench", "first_error_reference", "first_error_judge",
        "calibration",
    }
    assert rep["agreement"]["fake:judge"]["not_scored"] == rep["status"]["error"]
    assert set(rep["judges"][0]) >= {"judge", "judge_fingerprint", "cost_per_1k_steps", "tokens_per_step"}
    # --show adds examples to the JSON, one per shown row, with per-step score and reference.
    assert main(["inspect", str(path), "--json", "--show", "2", "--where", "errors"]) == 0
    shown = json.loads(capsys.readouterr().out)["examples"]
    assert len(shown) == 2 and all(e["status"] == "error" for e in shown)
    assert set(shown[0]["steps"][0]) == {"text", "score", "reference"}


def test_first_errors_match_schemas_first_error():
    # Oracle: the per-row Python definition in schemas.aggregate, on lists with nulls.
    rng = np.random.default_rng(7)
    lists = []
    for _ in range(300):
        k = int(rng.integers(0, 7))
        lists.append(None if rng.random() < 0.05 else
                     [None if rng.random() < 0.2 else round(float(rng.random()), 1) for _ in range(k)])
    ex = stats.explode(pa.array(lists, pa.list_(pa.float64())))
    for t in (0.3, 0.5):
        assert stats.first_errors(ex, t).tolist() == [first_error(s, t) for s in lists]


def test_auc_and_spearman_against_brute_force():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, 200) / 4.0  # many ties
    labels = rng.random(200) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert agreement.roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert agreement.roc_auc(scores, np.ones(200, bool)) is None

    def avg_rank(xs):
        return [sum(y < x for y in xs) + (sum(y == x for y in xs) + 1) / 2 for x in xs]

    b = scores + rng.normal(0, 0.3, 200)
    ra, rb = avg_rank(list(scores)), avg_rank(list(b))
    assert agreement.spearman(scores, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)


def test_compare_two_judges(tmp_path, capsys):
    a = write_rows(tmp_path / "a.parquet", score_rows(HAND))
    # Judge B scores exactly the reference labels, and also scored one response A never saw.
    b_items = [(rid, ref, [float(x) for x in ref]) for rid, ref, _ in HAND] + [("zz", [1, 1], [1.0, 1.0])]
    b = write_rows(tmp_path / "b.parquet", score_rows(b_items, judge="reference"))
    rep = _cli_json(capsys, a, b)
    assert rep["kind"] == "comparison" and len(rep["inputs"]) == 2
    c = rep["comparison"]
    assert c["judges_a"] == ["fake:judge"] and c["judges_b"] == ["reference"]
    assert (c["joined"], c["steps_compared"], c["length_mismatch"]) == (6, 17, 0)
    assert c["step_agreement"] == pytest.approx(13 / 17, abs=1e-6)  # = step accuracy vs labels
    assert c["first_error_agreement"] == pytest.approx(4 / 6, abs=1e-6)
    va = [x for _, _, s in HAND for x in s]
    vb = [float(x) for _, r, _ in HAND for x in r]
    assert c["pearson"] == pytest.approx(np.corrcoef(va, vb)[0, 1], abs=1e-6)
    # s2 differs in first error (max |diff| .7), s3 in its last step (.6), s4 in both (.6).
    assert c["responses_disagreeing"] == 3
    assert [d["response_id"] for d in c["disagreements"]] == ["s2", "s3", "s4"]
    assert c["disagreements"][0] == {"response_id": "s2", "first_error_a": 1, "first_error_b": -1,
                                     "steps_disagreeing": 1, "max_abs_diff": 0.7}
    # Terminal view and --show of the disagreements only.
    assert main(["inspect", str(a), str(b), "--show", "5", "--where", "disagree"]) == 0
    out = capsys.readouterr().out
    assert "A vs B" in out and "vs reference" in out
    assert all(f"#{k} s{k + 1}" in out for k in (1, 2, 3)) and "#4" not in out


def test_show_colours_and_filters(tmp_path, capsys):
    path = write_rows(tmp_path / "hand.parquet", score_rows(HAND))
    assert main(["inspect", str(path), "--show", "10", "--where", "disagree"]) == 0
    out = capsys.readouterr().out
    # Judge first error differs from the reference's in s2 and s4 only.
    assert "#1 s2" in out and "#2 s4" in out and "#3" not in out
    assert "[0.30] ref 1.00  s2 step 2" in out
    assert "first error=1  reference=-1" in out and "first error=1  reference=0" in out  # s2, s4

    from rich.console import Console

    from labeler.inspection import show

    loaded = stats.load(path, columns=show.SHOW_COLUMNS["step_scores"])
    rows = show.select_rows(loaded.table, "step_scores", "flagged", 0.5, 10)
    assert [loaded.table.column("response_id")[int(i)].as_py() for i in rows] == ["s2", "s3", "s4", "s5"]
    console = Console(record=True, force_terminal=True, color_system="truecolor", width=120)
    show.render(console, show.examples(loaded.table, "step_scores", rows[:1], 0.5), 0.5)
    styled = console.export_text(styles=True)
    assert "\x1b[1;31m[0.30]" in styled  # the error step is bold red; good steps are green
    assert "\x1b[32m[0.90]" in styled


def test_pairs_and_responses_and_run_folder(tmp_path, capsys):
    pairs = [
        {"pair_id": f"q{i}", "prompt": "p", "prefix_steps": ["a"], "chosen_steps": ["b", "c"],
         "rejected_steps": ["d"], "chosen_scores": [1.0, 0.9], "rejected_scores": [0.2],
         "chosen_reward": cr, "rejected_reward": rr, "strategy": "first-error",
         "judge_fingerprint": "fp"}
        for i, (cr, rr) in enumerate([(0.9, 0.2), (0.8, 0.7), (0.5, 0.6)])
    ]
    rep = _cli_json(capsys, write_rows(tmp_path / "pairs.parquet", pairs, PAIRS))
    # Margins 0.7, 0.1, -0.1: mean 0.7/3, one non-positive.
    assert rep["margin"]["mean"] == pytest.approx(0.7 / 3, abs=1e-6)
    assert rep["margin"]["nonpositive"] == 1 and rep["strategies"] == {"first-error": 3}
    assert rep["chosen_steps"]["total"] == 6 and rep["with_ref_logps"] == 0

    resp = [{"response_id": rid, "prompt": "p", "steps": [str(k) for k in range(len(ref))],
             "reference_scores": ref, "source": "prm800k"} for rid, ref, _ in HAND]
    rep = _cli_json(capsys, write_rows(tmp_path / "resp.parquet", resp, RESPONSES))
    assert rep["sources"] == {"prm800k": 6} and rep["steps"]["total"] == 17
    assert rep["reference"]["first_error"] == {"none": 3, "histogram": {"0": 1, "1": 1, "2": 1}}

    run = tmp_path / "run"
    write_rows(run / "part-00000.parquet", score_rows(HAND[:4]))
    write_rows(run / "part-00001.parquet", score_rows(HAND[4:]))
    (run / "run.json").write_text(json.dumps({"judge": "fake:judge", "counts": {"ok": 6}}))
    rep = _cli_json(capsys, run)
    assert rep["files"] == 2 and rep["rows"] == 6 and rep["run_manifest"]["counts"] == {"ok": 6}
    assert rep["agreement"]["fake:judge"]["processbench"]["f1"] == pytest.approx(2 / 3, abs=1e-6)

    # A job split across two machines leaves one manifest per machine.
    (run / "run.json").unlink()
    for k in (0, 1):
        (run / f"run-k{k}-of-2.json").write_text(json.dumps({"shard_index": k}))
    rep = _cli_json(capsys, run)
    assert rep["run_manifest"] == {"run-k0-of-2.json": {"shard_index": 0},
                                   "run-k1-of-2.json": {"shard_index": 1}}


def test_real_pipeline_gsm8k_calc_matches_perturbation_labels(tmp_path, capsys, gsm8k_sample):
    """ingest -> perturb (labels the corrupted step) -> label with the free gsm8k-calc judge ->
    inspect: the judge finds exactly the corrupted step, so ProcessBench F1 is 1.0."""
    resp, pert, run = tmp_path / "resp.parquet", tmp_path / "pert.parquet", tmp_path / "run"
    assert main(["ingest", "gsm8k", str(gsm8k_sample), "-o", str(resp)]) == 0
    assert main(["perturb", str(resp), "-o", str(pert), "--variants", "1", "--label-reference"]) == 0
    assert main(["label", str(pert), "--judge", "gsm8k-calc", "-o", str(run), "--progress", "none",
                 "--no-cache"]) == 0
    capsys.readouterr()
    rep = _cli_json(capsys, run)
    agr = rep["agreement"]["gsm8k-calc"]
    assert agr["compared"] > 100 and agr["processbench"]["erroneous"] > 50
    assert agr["processbench"]["f1"] == 1.0 and agr["step_accuracy"] == 1.0
    assert rep["run_manifest"]["judge"] == "gsm8k-calc" and rep["cost_usd"] == 0


def test_user_errors(tmp_path, capsys):
    path = write_rows(tmp_path / "hand.parquet", score_rows(HAND))
    resp = write_rows(tmp_path / "resp.parquet", [{"response_id": "r", "prompt": "p", "steps": ["a"]}],
                      RESPONSES)
    cases = [
        ([path, "--threshold", "1.5"], "--threshold must be in [0, 1], got 1.5"),
        ([path, path, path], "inspect takes one or two paths, got 3"),
        ([path, resp], "comparing two inputs needs two step_scores files; this is a 'responses' file"),
        ([resp, "--show", "1", "--where", "errors"], "--where errors needs a step_scores file"),
        ([tmp_path / "missing.parquet"], "no such file or folder"),
    ]
    for argv, message in cases:
        assert main(["inspect", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_plots_dir_writes_pngs(tmp_path):
    path = write_run(tmp_path / "run.parquet", 200, seed=5)
    assert main(["inspect", str(path), "--plots", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["calibration.png", "cost_per_1k_steps.png", "first_error.png", "score_by_position.png"]
    for p in (tmp_path / "plots").iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_100k_rows_fast_and_reads_only_needed_columns(tmp_path, capsys, monkeypatch):
    n = 100_000
    path = write_run(tmp_path / "big.parquet", n, seed=2, raw_bytes=200, error_rate=0.01)
    import schemas.tables as tables

    real = tables.read_parquet
    asked: list = []

    def spy(source, columns=None):  # records what inspect asks Parquet for
        asked.append(columns)
        return real(source, columns=columns)

    monkeypatch.setattr(tables, "read_parquet", spy)
    t0 = time.perf_counter()
    rep, loaded = build_report([str(path)], 0.5)
    elapsed = time.perf_counter() - t0
    print(f"\ninspect of {n} rows ({rep['steps']['total']} steps): {elapsed:.2f} s")
    assert asked == [stats.COLUMNS["step_scores"]]
    assert loaded[0].table.column_names == stats.COLUMNS["step_scores"]
    assert not {"raw", "steps", "prompt", "meta"} & set(asked[0])
    assert rep["rows"] == n
    agr = rep["agreement"]["fake:judge"]
    assert agr["compared"] + agr["not_scored"] == n
    # Cross-check a sample of rows against the per-row definitions.
    full = synthetic_run(n, seed=2, raw_bytes=200, error_rate=0.01).slice(0, 2000)
    ok = [r for r in full.select(["status", "scores"]).to_pylist() if r["status"] == "ok"]
    fe = [first_error(r["scores"]) for r in ok]
    ex = stats.explode(pa.array([r["scores"] for r in ok], pa.list_(pa.float64())))
    assert stats.first_errors(ex, 0.5).tolist() == fe
    assert not math.isnan(agr["step_auc"]) and 0.5 < agr["step_auc"] <= 1.0


def test_show_reads_text_only_from_the_shards_it_prints(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    for k in range(5):  # each shard its own responses, as in a real run folder
        write_run(run / f"part-{k:05d}.parquet", 40, seed=30 + k, id_prefix=f"s{k}-")
    import pyarrow.parquet as pq

    real = pq.ParquetFile.read_row_group
    opened: list = []

    def spy(self, i, columns=None, **kw):  # records which shard's text inspect decodes
        opened.append((self.metadata.num_rows, tuple(columns or ())))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    # Rows 0-39 are in part-00000, 40-79 in part-00001: ask for flagged rows, then check the
    # printed ids against a full read and the decoded shards against where those rows live.
    assert main(["inspect", str(run), "--json", "--show", "3", "--where", "flagged"]) == 0
    shown = json.loads(capsys.readouterr().out)["examples"]
    full = stats.load(run)
    fe = stats.first_errors(stats.explode(full.table.column("scores")), 0.5)
    ids = full.table.column("response_id").to_pylist()
    want = [ids[i] for i in np.flatnonzero(fe >= 0)[:3]]
    assert [e["response_id"] for e in shown] == want
    assert all(e["first_error"] >= 0 for e in shown)
    assert len(opened) == 1 and set(opened[0][1]) == {"prompt", "steps", "final_answer", "gold_answer"}
    texts = stats.take_rows(full, np.array([199, 0, 41]), ["prompt"]).column("prompt").to_pylist()
    assert [t.split(":")[0] for t in texts] == ["Problem 39", "Problem 0", "Problem 1"]


def test_show_says_so_when_no_row_matches(tmp_path, capsys):
    path = write_rows(tmp_path / "hand.parquet", score_rows(HAND))
    assert main(["inspect", str(path), "--show", "3", "--where", "errors"]) == 0
    assert "--show: no rows match --where errors" in capsys.readouterr().err


def test_tables_fit_80_columns(tmp_path):
    """#16 item 16: at 80 columns the judge name folded over four lines and the agreement
    headers broke mid-word ("compar / ed")."""
    from rich.console import Console

    from labeler.inspection import terminal

    judge_a, judge_b = "openai:gpt-4o-mini-2024-07-18", "anthropic:claude-3-5-sonnet-20241022"
    a = write_run(tmp_path / "a.parquet", 300, seed=1, judge=judge_a, error_rate=0.05)
    b = write_run(tmp_path / "b.parquet", 300, seed=2, judge=judge_b)
    for paths in ([a], [a, b]):
        report, _ = build_report([str(p) for p in paths])
        console = Console(width=80, record=True, color_system=None)
        terminal.print_report(console, report)
        lines = console.export_text().splitlines()
        assert max(console.measure(line).maximum for line in lines) <= 80
        for words in (judge_a, "$/1k steps", "ProcessBench F1", "calibration ECE", "step ROC AUC"):
            assert any(words in line for line in lines), words
        if len(paths) == 2:
            assert any(judge_b in line for line in lines)
            assert any("first error agreement" in line for line in lines)


def test_a_killed_run_is_counted_once_like_the_next_run_will(tmp_path, capsys):
    """#16 item 11: between a kill and the next `label` run a folder can hold a response twice
    (its earlier error row and the new ok row); inspect counted both. Oracle: the engine's own
    compaction of the same folder."""
    import shutil

    from labeler.engine.rundir import RunDir

    first = score_rows(HAND)
    for r in first[:3]:  # the first run failed on s1..s3
        r.update(status="error", error="HTTP 500", scores=None)
    retry = score_rows(HAND[:2])  # the rerun got s1, s2 before it was killed
    run = tmp_path / "run"
    write_rows(run / "part-00000.parquet", first)
    write_rows(run / "part-00001.parquet", retry)
    rep = _cli_json(capsys, run)
    compacted = tmp_path / "compacted"
    shutil.copytree(run, compacted)
    assert RunDir(compacted).compact() == 2
    oracle = _cli_json(capsys, compacted)
    assert rep["rows"] == oracle["rows"] == 6 and rep["superseded_rows"] == 2
    assert rep["status"] == oracle["status"] == {"ok": 5, "error": 1}
    for key in ("judges", "scores", "first_error", "agreement", "tokens", "steps"):
        assert rep[key] == oracle[key], key
    # --show picks from the counted rows and reads their text from the right shard.
    assert main(["inspect", str(run), "--show", "6", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["examples"]
    assert sorted((e["response_id"], e["status"]) for e in shown) == sorted(
        [(rid, "error" if rid == "s3" else "ok") for rid, _, _ in HAND])
    assert main(["inspect", str(run)]) == 0
    assert "ignored 2 superseded row(s)" in capsys.readouterr().out


def test_show_cuts_very_long_steps(tmp_path, capsys):
    """#16 item 11: one 60,000-character step (a model looping) filled the terminal."""
    rows = score_rows([("long", [1, 0], [0.9, 0.1])])
    rows[0]["steps"] = ["x = 1. " * 9000, "short step"]
    path = write_rows(tmp_path / "long.parquet", rows)
    assert main(["inspect", str(path), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "short step" in out and "… [62,640 more" in out and len(out) < 5000
    assert main(["inspect", str(path), "--show", "1", "--max-chars", "0"]) == 0
    assert len(capsys.readouterr().out) > 63_000
    assert main(["inspect", str(path), "--show", "1", "--json"]) == 0  # scripts get the full text
    assert len(json.loads(capsys.readouterr().out)["examples"][0]["steps"][0]["text"]) == 63_000
