"""`stepdpo judge-eval`: the ProcessBench table on hand-built files, every number computed by hand."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.inspection.judge_eval import load_split, reference_scores
from schemas.errors import UserError
from stepdpo.cli import main
from tests.fakes.critic_server import ScriptedCritic

KEY = "sk-test-judge-eval-123456"
# problem -> (steps, label, the scripted critic's answer)
GSM8K = {
    "g1": (["a", "b", "c"], 1, "paragraph 1 is wrong \\boxed{1}"),   # hit
    "g2": (["a", "b"], -1, "\\boxed{-1}"),                            # hit
    "g3": (["a", "b", "c"], 0, "\\boxed{2}"),                         # miss (too late)
    "g4": (["a", "b"], -1, "I am not sure."),                         # unparseable: a miss
}
MATH = {
    "m1": (["a", "b", "c", "d"], 2, "\\boxed{2}"),                   # hit
    "m2": (["a", "b"], -1, "\\boxed{0}"),                             # miss (false alarm)
    "m3": (["a", "b", "c"], -1, "\\boxed{-1}"),                       # hit
}
ANSWERS = {p: a for split in (GSM8K, MATH) for p, (_, _, a) in split.items()}


def records(split):
    return [{"id": p, "generator": "hand", "problem": p, "steps": s, "final_answer_correct": lab == -1,
             "label": lab} for p, (s, lab, _) in split.items()]


@pytest.fixture
def files(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("".join(json.dumps(r) + "\n" for r in records(GSM8K)))
    math = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(records(MATH)), math)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 1.0, "output": 10.0}}))
    return gsm, math, prices


@pytest.fixture
def critic(monkeypatch, tmp_path):
    server = ScriptedCritic(lambda ask: ANSWERS[ask.user.split("[Math Problem]\n\n")[1].split("\n")[0]],
                            usage=(1000, 100)).start()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    yield server
    server.stop()


def test_processbench_table_by_hand(files, critic, tmp_path, capsys):
    gsm, math, prices = files
    out = tmp_path / "eval"
    rc = main(["judge-eval", str(gsm), f"math={math}", "--judge", "openai:gpt-4o-mini", "--judge", "reference",
               "--template", "processbench", "-o", str(out), "--prices", str(prices), "--progress", "none",
               "--markdown", str(tmp_path / "table.md")])
    printed = capsys.readouterr().out
    assert rc == 0 and critic.total_requests == 7
    report = json.loads((out / "judge_eval.json").read_text())
    g = report["judges"]["openai:gpt-4o-mini"]["splits"]["gsm8k"]
    # gsm8k: erroneous g1 hit, g3 miss -> 1/2; correct g2 hit, g4 unparseable -> 1/2; F1 = 1/2.
    assert (g["error_accuracy"], g["correct_accuracy"], g["f1"], g["parse_failures"]) == (0.5, 0.5, 0.5, 1)
    # Steps: labeled positives g1 s0, g2 s0 s1, g4 s0 s1 (a miss: both wrong) -> TPR 3/5;
    # negatives g1 s1 (flagged), g3 s0 (not flagged) -> TNR 1/2; balanced F1 = 2*.6*.5/1.1.
    assert g["step_tpr"] == 0.6 and g["step_tnr"] == 0.5 and g["balanced_f1"] == pytest.approx(6 / 11, abs=1e-6)
    # Cost: 4 requests x (1000 in at $1/M + 100 out at $10/M) = $0.008 over 10 steps.
    assert g["cost_usd"] == pytest.approx(0.008) and g["cost_per_1k_steps"] == pytest.approx(0.8)
    m = report["judges"]["openai:gpt-4o-mini"]["splits"]["math"]
    # math: erroneous m1 hit -> 1; correct m2 miss, m3 hit -> 1/2; F1 = 2/3.
    assert (m["error_accuracy"], m["correct_accuracy"]) == (1.0, 0.5) and m["f1"] == pytest.approx(2 / 3, abs=1e-6)
    # Steps: positives m1 s0 s1 (hit), m2 s0 (flagged: miss) s1 (after the flag: rejected, miss), m3 x3
    # -> TPR 5/7; negative m1 s2 flagged -> TNR 1; balanced F1 = 2*(5/7)/(12/7) = 5/6.
    assert m["step_tpr"] == pytest.approx(5 / 7, abs=1e-6) and m["balanced_f1"] == pytest.approx(5 / 6, abs=1e-6)
    s = report["judges"]["openai:gpt-4o-mini"]["summary"]
    assert s["avg_f1"] == pytest.approx((0.5 + 2 / 3) / 2, abs=1e-6) and s["parse_failures"] == 1
    # The human labels as the judge: 100 everywhere, a sanity check of the files.
    ref = report["judges"]["reference"]
    assert all(ref["splits"][sp]["f1"] == 1.0 and ref["splits"][sp]["balanced_f1"] == 1.0 for sp in ("gsm8k", "math"))
    assert ref["summary"]["avg_f1"] == 1.0 and ref["summary"]["cost_usd"] == 0.0
    # Side by side in one Markdown table.
    assert "| judge | gsm8k | math | Avg. F1 | balanced F1 | $ / 1k steps | failures |" in printed
    # avg balanced F1 (6/11 + 5/6) / 2 = 68.9; $0.014 over 19 steps = $0.7368 per 1k.
    assert "| openai:gpt-4o-mini | 50.0 | 66.7 | 58.3 | 68.9 | 0.7368 | 1 |" in printed
    assert "| reference | 100.0 | 100.0 | 100.0 | 100.0 | 0.0000 | 0 |" in printed
    assert (tmp_path / "table.md").read_text() == printed
    # A rerun asks again only the case that ended in error (the unparseable critique); the others
    # are done in their folders.
    assert main(["judge-eval", str(gsm), f"math={math}", "--judge", "openai:gpt-4o-mini", "--template",
                 "processbench", "-o", str(out), "--progress", "none"]) == 0
    assert critic.total_requests == 8 and "gsm8k | 4 | 50.0 | 50.0 | 50.0 |" in capsys.readouterr().out


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "p", "steps": ["a"], "label": 0}) + "\n"
                   + json.dumps({"problem": "p", "steps": ["a", "b"], "label": 2}) + "\n")
    assert main(["judge-eval", str(bad), "--judge", "reference", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"stepdpo judge-eval: error: {bad} line 2: 'label' must be an integer in -1..1, not 2"
    bad.write_text(json.dumps({"problem": "p", "steps": ["a"]}) + "\n")
    with pytest.raises(UserError, match="line 1: missing field"):
        load_split(bad, "x")
    with pytest.raises(UserError, match="no such file"):
        load_split(tmp_path / "nope.jsonl", "x")
    assert reference_scores(2, 4) == [1.0, 1.0, 0.0, None] and reference_scores(-1, 2) == [1.0, 1.0]
