"""`stepdpo pairs`: exact pairs for every strategy on hand-built step_scores runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from labeler.pairs.build import PairsConfig, build_pairs, make_pairs
from schemas.errors import UserError
from schemas.ids import pair_id, response_id
from schemas.tables import PAIRS, RESPONSES, STEP_SCORES, from_rows, read_table, write_table
from stepdpo.cli import main

PROMPT = "Tom has 3 apples and buys 4 more. He eats 2. How many are left?"


def row(steps: list[str], scores: list[float | None], *, problem: str = "p1", prompt: str = PROMPT,
        fp: str = "fp-A", judge: str = "gsm8k-calc", status: str = "ok", **extra) -> dict:
    return {
        "response_id": response_id(prompt, steps),
        "problem_id": problem,
        "source": "test",
        "prompt": prompt,
        "steps": steps,
        "final_answer": None,
        "gold_answer": "5",
        "judge": judge,
        "judge_fingerprint": fp,
        "scores": scores,
        "status": status,
        "error": "boom" if status != "ok" else None,
        **extra,
    }


def write_run(folder: Path, rows: list[dict]) -> Path:
    write_table(from_rows(rows, STEP_SCORES), folder / "part-00000.parquet", STEP_SCORES)
    (folder / "run.json").write_text("{}")  # a run folder holds a manifest beside its shards
    return folder


def pairs(rows: list[dict], **cfg) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    return build_pairs(rows, PairsConfig(**cfg), stats), stats


S0, S1, S2 = "3+4=<<3+4=7>>7", "7-2=<<7-2=5>>5", "The answer is 5"
X1, X2 = "7-2=<<7-2=4>>4", "The answer is 4"


# ------------------------------------------------------------------------ best-worst


def test_best_worst_exact_and_aggregation_changes_the_pick() -> None:
    a = row(["a1", "a2"], [0.9, 0.9])  # product .81, last .9
    b = row(["b1", "b2"], [1.0, 0.3])  # product .30, last .3
    c = row(["c1", "c2"], [0.2, 1.0])  # product .20, last 1.0
    (p,), _ = pairs([a, b, c], strategy="best-worst")
    assert (p["chosen_response_id"], p["rejected_response_id"]) == (a["response_id"], c["response_id"])
    assert p == {
        "pair_id": pair_id(PROMPT, [], ["a1", "a2"], ["c1", "c2"]),
        "problem_id": "p1",
        "prompt": PROMPT,
        "prefix_steps": [],
        "chosen_steps": ["a1", "a2"],
        "rejected_steps": ["c1", "c2"],
        "chosen_scores": [0.9, 0.9],
        "rejected_scores": [0.2, 1.0],
        "chosen_reward": pytest.approx(0.81),
        "rejected_reward": pytest.approx(0.2),
        "strategy": "best-worst",
        "judge_fingerprint": "fp-A",
        "chosen_response_id": a["response_id"],
        "rejected_response_id": c["response_id"],
    }
    (p,), _ = pairs([a, b, c], strategy="best-worst", aggregate="last")
    assert (p["chosen_steps"], p["rejected_steps"]) == (["c1", "c2"], ["b1", "b2"])
    assert (p["chosen_reward"], p["rejected_reward"]) == (1.0, 0.3)
    (p,), _ = pairs([a, b, c], strategy="best-worst", aggregate="min")
    assert (p["chosen_steps"], p["rejected_steps"]) == (["a1", "a2"], ["c1", "c2"])


def test_best_worst_is_per_problem_and_min_margin_filters() -> None:
    rows = [
        row(["a"], [0.6]), row(["b"], [0.5]),  # p1: margin 0.1
        row(["c"], [0.9], problem="p2"), row(["d"], [0.1], problem="p2"),  # p2: margin 0.8
        row(["e"], [0.7], problem="p3"),  # p3: one solution, no pair
    ]
    got, stats = pairs(rows, strategy="best-worst", min_margin=0.05)
    assert [(p["problem_id"], p["chosen_steps"], p["rejected_steps"]) for p in got] == [
        ("p1", ["a"], ["b"]), ("p2", ["c"], ["d"]),
    ]
    got, stats = pairs(rows, strategy="best-worst", min_margin=0.2)
    assert [p["problem_id"] for p in got] == ["p2"]
    assert stats["below_min_margin"] == 1 and stats["problems"] == 3
    # Equal rewards never make a pair, even with no minimum margin.
    got, _ = pairs([row(["a"], [0.5]), row(["b"], [0.5])], strategy="best-worst", min_margin=0.0)
    assert got == []


def test_unscored_rows_have_no_reward() -> None:
    rows = [row(["a"], [None]), row(["b"], [0.9]), row(["c"], [0.1])]
    (p,), stats = pairs(rows, strategy="best-worst")
    assert (p["chosen_steps"], p["rejected_steps"]) == (["b"], ["c"])
    assert stats["skipped_no_reward"] == 1


# ------------------------------------------------------------------------ first-error


def test_first_error_exact_single_step_and_rest() -> None:
    good = row([S0, S1, S2], [1.0, 1.0, 1.0])
    bad = row([S0, X1, X2], [1.0, 0.0, 1.0])
    (p,), stats = pairs([bad, good])
    assert p["prefix_steps"] == [S0]
    assert (p["chosen_steps"], p["rejected_steps"]) == ([S1], [X1])
    assert (p["chosen_scores"], p["rejected_scores"]) == ([1.0], [0.0])
    assert (p["chosen_reward"], p["rejected_reward"]) == (1.0, 0.0)
    assert p["pair_id"] == pair_id(PROMPT, [S0], [S1], [X1])
    assert (p["chosen_response_id"], p["rejected_response_id"]) == (good["response_id"], bad["response_id"])
    assert p["strategy"] == "first-error"
    assert stats["wrong_solutions"] == 1

    (p,), _ = pairs([bad, good], continuation="rest")
    assert p["prefix_steps"] == [S0]
    assert (p["chosen_steps"], p["rejected_steps"]) == ([S1, S2], [X1, X2])
    assert (p["chosen_scores"], p["rejected_scores"]) == ([1.0, 1.0], [0.0, 1.0])


def test_first_error_at_step_zero_has_empty_prefix() -> None:
    good = row([S0, S1], [1.0, 1.0])
    bad = row(["3+4=<<3+4=8>>8", "8-2=<<8-2=6>>6"], [0.0, 1.0])
    (p,), _ = pairs([good, bad])
    assert p["prefix_steps"] == [] and p["chosen_steps"] == [S0]


def test_first_error_needs_the_shared_prefix_up_to_the_error() -> None:
    good = row([S0, S1, S2], [1.0, 1.0, 1.0])
    # Diverges at step 0 but its first error is at step 2: not a Step-DPO pair.
    early = row(["4+3=<<4+3=7>>7", S1, X2], [1.0, 1.0, 0.0])
    # Same step 1 text as the good one but judged wrong: the judge contradicts itself.
    contradict = row([S0, S1, X2], [1.0, 0.2, 0.0])
    got, stats = pairs([good, early, contradict])
    assert got == []
    assert stats["no_partner"] == 2 and stats["wrong_solutions"] == 2


def test_first_error_partner_may_be_wrong_later_only_for_single_steps() -> None:
    # The partner's step 1 is right, its step 2 is wrong: fine for `step`, not for `rest`.
    partner = row([S0, S1, X2], [1.0, 1.0, 0.0])
    bad = row([S0, X1, X2], [1.0, 0.0, None])
    got, _ = pairs([partner, bad])
    assert [(p["chosen_steps"], p["rejected_steps"]) for p in got] == [([S1], [X1])]
    got, stats = pairs([partner, bad], continuation="rest")
    assert got == [] and stats["no_partner"] == 2


def test_first_error_prefers_an_all_correct_partner_and_dedupes() -> None:
    partner = row([S0, S1, X2], [1.0, 1.0, 0.0])
    good = row([S0, S1, S2], [1.0, 0.9, 1.0])
    bad1 = row([S0, X1, X2], [1.0, 0.0, 0.0])
    bad2 = row([S0, X1, "So 4 apples"], [1.0, 0.1, 0.0])  # same diverging step as bad1
    got, stats = pairs([partner, good, bad1, bad2])
    # partner and bad1/bad2 are all wrong: each wrong one looks for a partner.
    assert [p["chosen_response_id"] for p in got] == [good["response_id"]] * len(got)
    step_pairs = {(tuple(p["chosen_steps"]), tuple(p["rejected_steps"])) for p in got}
    assert ((S1,), (X1,)) in step_pairs and ((S2,), (X2,)) in step_pairs
    assert stats["duplicate_pairs"] >= 1  # bad1 and bad2 give the same single-step pair
    assert len({p["pair_id"] for p in got}) == len(got)


def test_threshold_decides_what_an_error_is() -> None:
    good = row([S0, S1], [1.0, 0.8])
    bad = row([S0, X1], [1.0, 0.6])
    assert pairs([good, bad])[0] == []  # 0.6 is not an error at 0.5
    (p,), _ = pairs([good, bad], threshold=0.7, min_margin=0.1)
    assert (p["chosen_steps"], p["rejected_steps"]) == ([S1], [X1])
    assert pairs([good, bad], threshold=0.7, min_margin=0.3)[0] == []  # margin 0.2


# ------------------------------------------------------------------------ prm800k-alternatives


def test_prm800k_alternatives_exact() -> None:
    alts = [
        {"step": 1, "text": "7-2=6", "rating": -1, "score": 0.0, "flagged": False},
        {"step": 1, "text": "7 minus 2 is 5", "rating": 1, "score": 1.0, "flagged": False},
        {"step": 1, "text": "Let me think", "rating": 0, "score": 0.5, "flagged": False},
        {"step": 1, "text": "7-2=3", "rating": -1, "score": 0.0, "flagged": True},  # flagged: left out
        {"step": 0, "text": "3+4=8", "rating": -1, "score": 0.0, "flagged": False},
    ]
    r = row([S0, S1], [0.0, 0.0], fp="ref", judge="reference",
            reference_scores=[1.0, 1.0], meta=json.dumps({"alternatives": alts}))
    got, _ = pairs([r], strategy="prm800k-alternatives")
    assert [(p["prefix_steps"], p["chosen_steps"], p["rejected_steps"]) for p in got] == [
        ([], [S0], ["3+4=8"]),  # the taken step (rated 1) vs a -1 alternative
        ([S0], [S1], ["7-2=6"]),
        ([S0], ["7 minus 2 is 5"], ["7-2=6"]),
    ]
    assert all(p["chosen_reward"] == 1.0 and p["rejected_reward"] == 0.0 for p in got)
    assert all(p["chosen_scores"] == [1.0] and p["rejected_scores"] == [0.0] for p in got)


def test_prm800k_alternatives_from_an_ingested_responses_file(tmp_path: Path) -> None:
    line = {
        "labeler": "x", "timestamp": "2022-01-01T00:00:00", "generation": 1,
        "is_quality_control_question": False, "is_initial_screening_question": False,
        "question": {"problem": PROMPT, "ground_truth_answer": "5"},
        "label": {
            "steps": [
                {"completions": [{"text": S0, "rating": 1, "flagged": False}],
                 "human_completion": None, "chosen_completion": 0},
                {"completions": [{"text": X1, "rating": -1, "flagged": False},
                                 {"text": S1, "rating": 1, "flagged": False}],
                 "human_completion": None, "chosen_completion": 1},
            ],
            "total_time": 1, "finish_reason": "solution",
        },
    }
    src = tmp_path / "phase2.jsonl"
    src.write_text(json.dumps(line) + "\n")
    resp = tmp_path / "responses.parquet"
    assert main(["ingest", "prm800k", str(src), "-o", str(resp)]) == 0
    manifest = make_pairs([resp], tmp_path / "pairs", PairsConfig(strategy="prm800k-alternatives"))
    got = read_table(tmp_path / "pairs", PAIRS).to_pylist()
    assert manifest["counts"]["pairs"] == 1
    assert [(p["prefix_steps"], p["chosen_steps"], p["rejected_steps"]) for p in got] == [([S0], [S1], [X1])]
    assert got[0]["judge_fingerprint"] is None


# ------------------------------------------------------------------------ inputs, judges, CLI


def test_error_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        row(["best"], [1.0], status="error"),  # would be chosen if it were used
        row(["mid"], [0.7]),
        row(["low"], [0.1]),
    ]
    run = write_run(tmp_path / "run", rows)
    manifest = make_pairs([run], tmp_path / "pairs", PairsConfig(strategy="best-worst"))
    (p,) = read_table(tmp_path / "pairs", PAIRS).to_pylist()
    assert (p["chosen_steps"], p["rejected_steps"]) == (["mid"], ["low"])
    assert manifest["counts"]["skipped_status"] == 1
    assert manifest["counts"]["input_rows"] == 3


def test_mixed_judges_are_refused_unless_allowed(tmp_path: Path, capsys) -> None:
    run_a = write_run(tmp_path / "a", [row(["x"], [0.9], fp="fa0123456789abcd", judge="openai:gpt-4o")])
    run_b = write_run(tmp_path / "b", [row(["y"], [0.1], fp="fb0123456789abcd", judge="gsm8k-calc")])
    out = tmp_path / "pairs"
    assert main(["pairs", str(run_a), str(run_b), "-o", str(out), "--strategy", "best-worst"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "stepdpo pairs: error: inputs were scored by 2 different judges (gsm8k-calc (fb0123456789), "
        "openai:gpt-4o (fa0123456789)); their scores are not comparable, so pairs are not mixed "
        "across them; label with one judge or pass --allow-mixed-judges"
    )
    assert not out.exists()
    assert main(["pairs", str(run_a), str(run_b), "-o", str(out), "--strategy", "best-worst",
                 "--allow-mixed-judges"]) == 0
    (p,) = read_table(out, PAIRS).to_pylist()
    assert p["judge_fingerprint"] == "fa0123456789abcd|fb0123456789abcd"


def test_cli_shards_manifest_dedupe_and_rerun(tmp_path: Path, capsys) -> None:
    rows = []
    for i in range(5):
        prompt = f"Problem {i}: 3+4-2?"
        rows += [
            row([S0, S1, S2], [1.0, 1.0, 1.0], problem=f"p{i}", prompt=prompt),
            row([S0, X1, X2], [1.0, 0.0, None], problem=f"p{i}", prompt=prompt),
        ]
    run = write_run(tmp_path / "run", rows)
    copy = write_run(tmp_path / "copy", rows)  # the same rows twice: deduplicated
    out = tmp_path / "pairs"
    assert main(["pairs", str(run), str(copy), "-o", str(out), "--shard-size", "2"]) == 0
    assert "5 first-error pairs from 20 rows of 5 problems" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"
    ]
    got = read_table(out, PAIRS).to_pylist()
    assert len(got) == 5 and len({p["pair_id"] for p in got}) == 5
    assert [p["problem_id"] for p in got] == [f"p{i}" for i in range(5)]
    manifest = json.loads((out / "pairs.json").read_text())
    assert manifest["counts"] == {
        "duplicate_rows": 10, "input_rows": 20, "pairs": 5, "problems": 5, "wrong_solutions": 5,
    }
    assert manifest["config"]["strategy"] == "first-error"
    assert manifest["judge_fingerprints"] == ["fp-A"]
    assert manifest["schema"] == "pairs/1"
    assert (manifest["aggregation"], manifest["step_threshold"], manifest["complete"]) == ("product", 0.5, True)
    assert manifest["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    # A rerun with bigger shards leaves no stale shard behind.
    assert main(["pairs", str(run), "-o", str(out), "--overwrite"]) == 0
    assert [p.name for p in out.glob("*.parquet")] == ["part-00000.parquet"]
    assert read_table(out, PAIRS).num_rows == 5


def test_wrong_inputs_are_clear_errors(tmp_path: Path, capsys) -> None:
    good = row([S0, S1], [1.0, 1.0])
    bad = row([S0, X1], [1.0, 0.0])
    run = write_run(tmp_path / "run", [good, bad])
    make_pairs([run], tmp_path / "pairs", PairsConfig())
    assert main(["pairs", str(tmp_path / "pairs"), "-o", str(tmp_path / "p2")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"stepdpo pairs: error: {tmp_path / 'pairs'}: this is a 'pairs' file; pairs are built "
        "from 'step_scores' runs"
    )
    resp_rows = [{k: v for k, v in good.items() if k in RESPONSES.schema.names}]
    resp = write_table(from_rows(resp_rows, RESPONSES), tmp_path / "r.parquet", RESPONSES)
    with pytest.raises(UserError, match=r"is a 'responses' file; 'first-error' pairs need judge scores"):
        make_pairs([resp], tmp_path / "p3", PairsConfig())
    with pytest.raises(UserError, match="mix 'step_scores' runs and 'responses' files"):
        make_pairs([run, resp], tmp_path / "p3", PairsConfig(strategy="prm800k-alternatives"))
    assert main(["pairs", str(tmp_path / "nope"), "-o", str(tmp_path / "p4")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_no_pairs_says_why_and_writes_an_empty_shard(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", [row([S0, S1], [1.0, 1.0])])
    out = tmp_path / "pairs"
    assert main(["pairs", str(run), "-o", str(out)]) == 0
    assert "pairs: no pairs were made: it needs a wrong and a right solution" in capsys.readouterr().out
    assert read_table(out, PAIRS).num_rows == 0


def test_end_to_end_ingest_perturb_label_pairs(tmp_path: Path, gsm8k_sample: Path, capsys) -> None:
    """The no-API path: every first-error pair's rejected step is the step perturb corrupted."""
    resp, pert, run, out = (tmp_path / n for n in ("r.parquet", "p.parquet", "run", "pairs"))
    assert main(["ingest", "gsm8k", str(gsm8k_sample), "-o", str(resp)]) == 0
    assert main(["perturb", str(resp), "-o", str(pert), "--variants", "2", "--seed", "7"]) == 0
    assert main(["label", str(pert), "--judge", "gsm8k-calc", "-o", str(run),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["pairs", str(run), "-o", str(out), "--strategy", "first-error"]) == 0
    capsys.readouterr()
    responses = {r["response_id"]: r for r in read_table(pert, RESPONSES).to_pylist()}
    variants = [r for r in responses.values() if "perturbation" in (r["meta"] or "")]
    got = read_table(out, PAIRS).to_pylist()
    assert len(got) == len(variants) > 300  # one pair per flawed variant
    for p in got:
        info = json.loads(responses[p["rejected_response_id"]]["meta"])["perturbation"]
        original = responses[info["of"]]
        assert p["chosen_response_id"] == info["of"]
        assert len(p["prefix_steps"]) == info["step"]
        assert p["prefix_steps"] == original["steps"][: info["step"]]
        assert p["chosen_steps"] == [original["steps"][info["step"]]]
        assert p["rejected_steps"] == [responses[p["rejected_response_id"]]["steps"][info["step"]]]
        assert f"={info['new_result']}>>" in p["rejected_steps"][0]
        assert (p["chosen_reward"], p["rejected_reward"]) == (1.0, 0.0)


def test_a_response_scored_twice_by_one_judge_keeps_its_first_ok_row(tmp_path: Path) -> None:
    first = write_run(tmp_path / "a", [row(["x"], [0.9]), row(["y"], [0.2]), row(["z"], [0.5])])
    later = write_run(tmp_path / "b", [row(["x"], [0.0]), row(["z"], [0.1])])
    make_pairs([first, later], tmp_path / "pairs", PairsConfig(strategy="best-worst"))
    (p,) = read_table(tmp_path / "pairs", PAIRS).to_pylist()
    assert (p["chosen_steps"], p["rejected_steps"]) == (["x"], ["y"])
    assert json.loads((tmp_path / "pairs" / "pairs.json").read_text())["counts"]["duplicate_rows"] == 2


def test_threshold_outside_the_score_range_is_refused() -> None:
    """Like `stepdpo inspect --threshold`; 2.0 made every step an error and silently no pairs."""
    for bad in (2.0, -0.1, float("nan")):
        with pytest.raises(UserError, match="--threshold must be in"):
            build_pairs([], PairsConfig(threshold=bad), Counter())


def test_output_folder_holding_other_files_is_refused(tmp_path: Path, capsys) -> None:
    """`stepdpo pairs RUN -o RUN` replaced the paid step_scores shards with pair shards."""
    run = write_run(tmp_path / "run", [row([S0, S1, S2], [1.0, 1.0, 1.0]), row([S0, X1, X2], [1.0, 0.0, 0.0])])
    before = (run / "part-00000.parquet").read_bytes()
    assert main(["pairs", str(run), "-o", str(run)]) == 2
    assert "choose another -o folder" in capsys.readouterr().err
    assert (run / "part-00000.parquet").read_bytes() == before
    # Rewriting an earlier pairs folder is still fine, with --overwrite.
    assert main(["pairs", str(run), "-o", str(tmp_path / "pairs")]) == 0
    assert main(["pairs", str(run), "-o", str(tmp_path / "pairs"), "--overwrite"]) == 0


def test_continuation_without_first_error_says_it_does_nothing(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", [row([S0, S1, S2], [1.0, 1.0, 1.0]), row([S0, X1, X2], [1.0, 0.0, 0.0])])
    assert main(["pairs", str(run), "-o", str(tmp_path / "p"), "--strategy", "best-worst",
                 "--continuation", "rest"]) == 0
    assert "--continuation rest applies to --strategy first-error only" in capsys.readouterr().err


# ------------------------------------------------------------------------ whole folders (#16 item 4)


def _two_problem_run(folder: Path, n: int = 6) -> Path:
    rows = []
    for i in range(n):
        prompt = f"Problem {i}: 3+4-2?"
        rows += [row([S0, S1, S2], [1.0, 1.0, 1.0], problem=f"p{i}", prompt=prompt),
                 row([S0, X1, X2], [1.0, 0.0, 0.0], problem=f"p{i}", prompt=prompt)]
    return write_run(folder, rows)


KILL_AFTER_TWO_SHARDS = """
import os, signal, sys
import labeler.pairs.build as build
from labeler.pairs.build import PairsConfig, make_pairs
real, n = build.write_table, [0]
def dying(*a, **kw):
    out = real(*a, **kw)
    n[0] += 1
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
build.write_table = dying
make_pairs([sys.argv[1]], sys.argv[2], PairsConfig(shard_size=1), overwrite=True)
"""


def test_a_killed_pairs_run_leaves_the_old_folder_and_readers_refuse_partial_ones(tmp_path, capsys):
    """kill -9 midway left shards without pairs.json, and train/inspect used them silently."""
    import os
    import subprocess
    import sys

    from schemas.folders import require_complete

    run = _two_problem_run(tmp_path / "run")
    out = tmp_path / "pairs"
    assert main(["pairs", str(run), "-o", str(out), "--strategy", "first-error"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_SHARDS, str(run), str(out)], env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    # The old folder is exactly as it was; the killed writer's work sits in a hidden sibling.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (staging,) = [p for p in tmp_path.iterdir() if p.name.startswith(".pairs.staging-")]
    assert sorted(p.name for p in staging.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    # What the old code left behind (shards, no manifest) is refused by readers, in one line.
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in staging.iterdir():
        (partial / f.name).write_bytes(f.read_bytes())
    assert main(["inspect", str(partial)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stepdpo inspect: error: {partial}: no pairs.json or precompute.json manifest")
    assert "\n" not in err
    with pytest.raises(UserError, match="not known to be complete"):
        require_complete(partial, "pairs.json")
    # The next run removes the dead writer's staging folder and swaps its own folder in.
    assert main(["pairs", str(run), "-o", str(out), "--shard-size", "4", "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pairs.")]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert require_complete(out, "pairs.json")["shards"] == ["part-00000.parquet", "part-00001.parquet"]
    assert read_table(out, PAIRS).num_rows == 6


def test_a_rerun_never_mixes_shards_and_needs_overwrite(tmp_path, capsys):
    run = _two_problem_run(tmp_path / "run")
    out = tmp_path / "pairs"
    assert main(["pairs", str(run), "-o", str(out), "--shard-size", "1"]) == 0
    six = sorted(p.name for p in out.glob("*.parquet"))
    assert len(six) == 6
    # Other options into the same folder: refused without --overwrite, nothing touched.
    assert main(["pairs", str(run), "-o", str(out), "--strategy", "best-worst"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"stepdpo pairs: error: -o {out} already holds pairs; pass --overwrite to replace them, or "
        "choose another -o folder")
    assert sorted(p.name for p in out.glob("*.parquet")) == six
    # With --overwrite the folder is replaced whole: the new shards only, under the new manifest.
    assert main(["pairs", str(run), "-o", str(out), "--strategy", "best-worst", "--overwrite"]) == 0
    assert [p.name for p in out.glob("*.parquet")] == ["part-00000.parquet"]
    assert set(read_table(out, PAIRS).column("strategy").to_pylist()) == {"best-worst"}
    # A shard copied in from elsewhere (or left by an old writer) makes the folder refused.
    from schemas.folders import require_complete

    (out / "part-00007.parquet").write_bytes((out / "part-00000.parquet").read_bytes())
    with pytest.raises(UserError, match=r"1 shard\(s\) not listed in pairs.json \(part-00007.parquet\)"):
        require_complete(out, "pairs.json")
    # A folder holding anything else is never replaced, even with --overwrite.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["pairs", str(run), "-o", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "holds todo.txt, which writing pairs there would delete" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


# ------------------------------------------------------------------------ one problem per pair (#16 item 8)


def test_rows_of_one_id_but_different_problem_texts_are_never_paired(tmp_path, capsys):
    """best-worst once paired "What is 1+1?" with the 7×8 solution: both had problem id 'p1'."""
    easy = row(["1+1=2", "The answer is 2"], [1.0, 1.0], prompt="What is 1+1?")
    times = row(["7*8=54", "The answer is 54"], [1.0, 0.0], prompt="What is 7*8?")
    got, stats = pairs([easy, times], strategy="best-worst", min_margin=0.0)
    assert got == [] and stats["problems"] == 2 and stats["problem_ids_on_several_texts"] == 1
    run = write_run(tmp_path / "run", [easy, times, row(["7*8=56", "The answer is 56"], [1.0, 1.0],
                                                        prompt="What is 7*8?")])
    assert main(["pairs", str(run), "-o", str(tmp_path / "p"), "--strategy", "best-worst"]) == 0
    assert "1 problem id(s) name several different problem texts" in capsys.readouterr().err
    (p,) = read_table(tmp_path / "p", PAIRS).to_pylist()
    assert p["prompt"] == "What is 7*8?" and p["chosen_steps"] == ["7*8=56", "The answer is 56"]
    # A strategy that tried to join two texts anyway (a bug, or a new strategy) is stopped.
    from labeler.pairs.strategies import make_pair

    with pytest.raises(UserError, match="would join two different problem texts"):
        make_pair("best-worst", easy, times, [], ["a"], ["b"], [1.0], [0.0], PairsConfig())


# ------------------------------------------------------------------------ shared leading steps (#17 item 1)


def test_leading_steps_both_sides_share_move_into_the_prefix_for_every_strategy() -> None:
    """A best-worst pair of a solution and its perturbed variant shares its first steps
    verbatim; under step weights they would be trained on. They belong in the prompt."""
    good = row([S0, S1, S2], [0.9, 1.0, 1.0])
    bad = row([S0, X1, X2], [0.8, 0.2, 0.5])  # the judge scored the shared step a bit lower here
    (p,), stats = pairs([good, bad], strategy="best-worst")
    assert p["prefix_steps"] == [S0]
    assert (p["chosen_steps"], p["rejected_steps"]) == ([S1, S2], [X1, X2])
    assert (p["chosen_scores"], p["rejected_scores"]) == ([1.0, 1.0], [0.2, 0.5])
    # Rewards are the stored scores aggregated: a row stays self-consistent.
    assert (p["chosen_reward"], p["rejected_reward"]) == (1.0, pytest.approx(0.1))
    assert p["pair_id"] == pair_id(PROMPT, [S0], [S1, S2], [X1, X2])
    assert stats["shared_steps_moved_to_prefix"] == 1
    # One side a prefix of the other: each side keeps at least one step.
    short = row([S0, S1], [1.0, 0.1])
    (p,), _ = pairs([good, short], strategy="best-worst", aggregate="min")
    assert (p["prefix_steps"], p["chosen_steps"], p["rejected_steps"]) == ([S0], [S1, S2], [S1])
    # Strategies that already diverge at their first step are unchanged.
    (p,), _ = pairs([good, bad], strategy="first-error", continuation="rest")
    assert (p["prefix_steps"], p["chosen_steps"], p["rejected_steps"]) == ([S0], [S1, S2], [X1, X2])
    # A strategy added later gets the same treatment (the build loop applies it to every pair).
    from labeler.pairs import strategies

    def whole(group, cfg, stats):
        a, b = sorted(group, key=lambda r: -sum(r["scores"]))
        return [strategies.make_pair("whole", a, b, [], list(a["steps"]), list(b["steps"]),
                                     list(a["scores"]), list(b["scores"]), cfg)]

    strategies.STRATEGIES["whole"] = whole
    try:
        (p,), _ = pairs([good, bad], strategy="whole")
    finally:
        del strategies.STRATEGIES["whole"]
    assert p["prefix_steps"] == [S0] and p["chosen_steps"] == [S1, S2]


def test_pairs_json_records_how_rewards_and_errors_were_decided(tmp_path, capsys) -> None:
    """The trainer reads these to use the stored rewards and the same error threshold."""
    run = _two_problem_run(tmp_path / "run", n=2)
    manifest = make_pairs([run], tmp_path / "pairs", PairsConfig(aggregate="min", threshold=0.3))
    saved = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert saved == manifest
    assert (saved["aggregation"], saved["step_threshold"], saved["score_floor"]) == ("min", 0.3, 1e-6)
    assert saved["complete"] is True and saved["shards"] == ["part-00000.parquet"]
    from schemas.aggregate import DEFAULT_STEP_THRESHOLD, aggregate

    assert PairsConfig().threshold == DEFAULT_STEP_THRESHOLD
    for p in read_table(tmp_path / "pairs", PAIRS).to_pylist():
        assert p["chosen_reward"] == aggregate(p["chosen_scores"], saved["aggregation"])
        assert p["rejected_reward"] == aggregate(p["rejected_scores"], saved["aggregation"])
    # inspect shows how the folder was made.
    assert main(["inspect", str(tmp_path / "pairs")]) == 0
    assert "rewards: min of the stored step scores; step threshold 0.3" in capsys.readouterr().out
