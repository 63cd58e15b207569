"""`stepdpo ingest`: GSM8K, PRM800K and generic files → responses, and every bad-input case."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import RESPONSES, read_table, response_id
from stepdpo.cli import main

DATA = Path(__file__).parent / "data"
PRM1 = DATA / "prm800k" / "phase1_sample.jsonl"
PRM2 = DATA / "prm800k" / "phase2_sample.jsonl"


def ingest(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["ingest", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(path: Path) -> list[dict]:
    return read_table(path, RESPONSES).to_pylist()


def gold_answers(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out.append(json.loads(line)["answer"].split("####")[-1].strip().replace(",", ""))
    return out


# ------------------------------------------------------------------------------------ GSM8K


def test_gsm8k_sample(capsys, tmp_path, gsm8k_sample):
    out = tmp_path / "r.parquet"
    code, stdout, _ = ingest(capsys, "gsm8k", gsm8k_sample, "-o", out)
    assert code == 0
    rows = rows_of(out)
    assert len(rows) == 200
    assert "wrote 200 responses" in stdout and "skipped 0" in stdout
    first = rows[0]
    # Janet's ducks: two calculator lines, answer 18; the <<...>> notes stay in the steps.
    assert first["steps"] == [
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.",
    ]
    assert first["final_answer"] == first["gold_answer"] == "18"
    assert first["source"] == "gsm8k"
    assert first["response_id"] == response_id(first["prompt"], first["steps"])
    assert first["reference_scores"] is None
    assert json.loads(first["meta"]) == {"origin": "test_sample.jsonl:1"}
    assert pq.read_schema(out).metadata[b"stepdpo.schema"] == b"responses/1"


def test_gsm8k_ids_are_stable_across_runs(capsys, tmp_path, gsm8k_sample):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    ingest(capsys, "gsm8k", gsm8k_sample, "-o", a, "--limit", "20")
    ingest(capsys, "gsm8k", gsm8k_sample, "-o", b, "--limit", "20")
    ra, rb = rows_of(a), rows_of(b)
    assert len(ra) == 20
    assert [r["response_id"] for r in ra] == [r["response_id"] for r in rb]
    assert [r["problem_id"] for r in ra] == [r["problem_id"] for r in rb]
    assert all(re.fullmatch(r"gsm8k:[0-9a-f]{16}", r["problem_id"]) for r in ra)


@pytest.mark.parametrize("which,fixture,expected,row_group",
                         [("test", "gsm8k_test_full", 1319, 4096), ("train", "gsm8k_train_slice", 403, 128)])
def test_gsm8k_full_sets(capsys, tmp_path, request, monkeypatch, which, fixture, expected, row_group):
    src = request.getfixturevalue(fixture)
    # the train slice is small: smaller row groups still prove the writer streams
    monkeypatch.setattr("labeler.sources.ingest.common.ROW_GROUP", row_group)
    out = tmp_path / f"{which}.parquet"
    code, stdout, _ = ingest(capsys, "gsm8k", src, "-o", out)
    assert code == 0
    table = read_table(out, RESPONSES, columns=["steps", "final_answer", "gold_answer"])
    assert table.num_rows == expected
    assert f"wrote {expected:,} responses" in stdout
    rows = table.to_pylist()
    assert all(len(r["steps"]) >= 1 and all(s.strip() for s in r["steps"]) for r in rows)
    gold = gold_answers(src)
    assert [r["final_answer"] for r in rows] == gold
    assert [r["gold_answer"] for r in rows] == gold
    assert not any("," in g for g in gold)
    assert "-7" in gold or which == "test"  # negative answers survive (train has some)
    # Several row groups: the writer streamed instead of building one big table.
    assert pq.ParquetFile(out).num_row_groups == -(-expected // row_group) > (which == "train")


def test_gsm8k_commas_and_blank_lines(capsys, tmp_path):
    src = tmp_path / "g.jsonl"
    src.write_text(json.dumps({"question": "How many?", "answer": "First 1,000 + 200 = <<1000+200=1200>>1200.\n\nThen double.\n#### 2,400"}) + "\n\n")
    out = tmp_path / "o.parquet"
    assert ingest(capsys, "gsm8k", src, "-o", out)[0] == 0
    (row,) = rows_of(out)
    assert row["steps"] == ["First 1,000 + 200 = <<1000+200=1200>>1200.", "Then double."]
    assert row["final_answer"] == "2400"


# ---------------------------------------------------------------------------------- PRM800K


def test_prm800k_phase1_and_phase2(capsys, tmp_path):
    out = tmp_path / "prm.parquet"
    code, stdout, _ = ingest(capsys, "prm800k", PRM1, PRM2, "-o", out)
    assert code == 0
    assert "wrote 4 responses" in stdout and "with reference scores: 4" in stdout
    p1, p1b, p2, p2b = rows_of(out)

    # Phase 1: chosen completions, the human-written step in the middle (a +1 step).
    assert p1["steps"] == [
        "The positive divisors of $12$ are $1, 2, 3, 4, 6$ and $12$.",
        "Adding them up: $1 + 2 + 3 + 4 + 6 + 12 = 28$.",
        "So the sum is $28$.\n\n# Answer\n\n28",
    ]
    assert p1["reference_scores"] == [1.0, 1.0, 1.0]
    assert p1["final_answer"] == "28" and p1["gold_answer"] == "28"
    assert p1["source"] == "prm800k"
    m1 = json.loads(p1["meta"])
    assert m1["phase"] == 1 and m1["generation"] is None and m1["finish_reason"] == "solution"
    assert m1["step_origin"] == ["completion:0", "human", "completion:0"]
    assert [(a["step"], a["rating"], a["score"]) for a in m1["alternatives"]] == [
        (0, -1, 0.0), (1, -1, 0.0), (1, -1, 0.0)
    ]
    assert m1["alternatives"][0]["text"] == "The divisors of $12$ are $2, 3, 4$ and $6$."
    assert m1["labeler"] == "5a7b1b0e-2f4b-4c1e-9a55-0d3c8f1e7a21"
    assert m1["total_time"] == 84213

    # Rating 0 → 0.5, a missing rating stays null, flagged step recorded, screening flag kept.
    assert p1b["reference_scores"] == [0.5, None]
    m1b = json.loads(p1b["meta"])
    assert m1b["flagged_steps"] == [1] and m1b["is_initial_screening_question"] is True
    assert m1b["finish_reason"] == "give_up" and p1b["final_answer"] is None

    # Phase 2 found_error: the erroneous step (rated -1, chosen_completion null) is kept.
    assert p2["steps"] == [
        "I need to solve for $x$ first.",
        "Subtracting $5$ from both sides gives $3x = 15$.",
        "Dividing by $3$ gives $x = 3$.",
    ]
    assert p2["reference_scores"] == [0.5, 1.0, 0.0]
    m2 = json.loads(p2["meta"])
    assert m2["phase"] == 2 and m2["generation"] == 7 and m2["finish_reason"] == "found_error"
    assert m2["step_origin"][-1] == "unchosen:0"
    assert m2["pre_generated_answer"] == "9" and m2["pre_generated_verifier_score"] == 0.0312
    assert [(a["step"], a["text"], a["score"]) for a in m2["alternatives"]] == [
        (2, "Dividing both sides by $3$ gives $x = 5$.", 1.0),
        (2, "So $x = 15 - 3 = 12$.", 0.0),
    ]
    assert p2["final_answer"] is None and p2["gold_answer"] == "25"

    m2b = json.loads(p2b["meta"])
    assert m2b["is_quality_control_question"] is True
    assert p2b["final_answer"] == "6" and p2b["reference_scores"] == [1.0]


def _prm_line(**label_overrides) -> dict:
    row = json.loads(PRM2.read_text().splitlines()[0])
    row["label"].update(label_overrides)
    return row


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r["label"].update(steps=[]), "the solution is empty (label.steps is empty; finish_reason='found_error')"),
        (lambda r: r["label"]["steps"][0].update(chosen_completion=3), "label.steps[0].chosen_completion 3 is not an index into its 1 completion(s)"),
        (lambda r: r["label"]["steps"][1]["completions"][0].update(rating=2), "label.steps[1]: rating 2 is not -1, 0, 1 or null"),
        (lambda r: r["question"].pop("problem"), "field 'question.problem' is missing"),
        (lambda r: r["label"]["steps"][0]["completions"][0].update(text="  "), "step 1 of 3 is empty"),
    ],
)
def test_prm800k_bad_rows(capsys, tmp_path, mutate, message):
    row = _prm_line()
    mutate(row)
    src = tmp_path / "phase2.jsonl"
    src.write_text(json.dumps(row) + "\n")
    code, _, err = ingest(capsys, "prm800k", src, "-o", tmp_path / "o.parquet")
    assert code == 2
    assert err.strip() == f"stepdpo ingest: error: phase2.jsonl:1: {message} (use --skip-invalid to skip such records)"
    assert not (tmp_path / "o.parquet").exists()


# -------------------------------------------------------------------------------- generic


ITEMS = [
    {"id": "p1", "problem": "What is 2 + 3 * 4?", "steps": ["3 * 4 = 12.", "2 + 12 = 14.", "The answer is 14."], "label": -1},
    {"id": "p2", "problem": "What is 2 + 3 * 4?", "steps": ["2 + 3 = 5.", "5 * 4 = 20.", "The answer is 20."], "label": 0},
    {"id": 3, "problem": "Half of 10, plus 1?", "steps": ["Half of 10 is 5.", "5 + 1 = 7.", "The answer is 7."], "label": 1},
    {"id": "p4", "problem": "1 + 1?", "steps": ["1 + 1 = 2."], "label": None},
]


def test_json_array_first_error_labels(capsys, tmp_path):
    src = tmp_path / "items.json"
    src.write_text(json.dumps(ITEMS, indent=2))
    out = tmp_path / "o.parquet"
    code, stdout, _ = ingest(capsys, "jsonl", src, "--prompt-field", "problem", "--steps-field", "steps",
                             "--id-field", "id", "--label-field", "label", "--label-kind", "first-error",
                             "-o", out)
    assert code == 0, stdout
    rows = rows_of(out)
    assert [r["problem_id"] for r in rows] == ["p1", "p2", "3", "p4"]
    assert [r["reference_scores"] for r in rows] == [
        [1.0, 1.0, 1.0],      # -1: every step right
        [0.0, None, None],    # the first step is wrong; later steps unknown
        [1.0, 0.0, None],
        None,                 # null label: no reference
    ]
    assert rows[0]["steps"] == ITEMS[0]["steps"]
    assert all(r["source"] == "jsonl" for r in rows)
    # Each item's line in the pretty-printed array is its origin.
    lines = [json.loads(r["meta"])["origin"] for r in rows]
    assert lines[0] == "items.json:2" and len(set(lines)) == 4
    assert "with reference scores: 3" in stdout


def test_jsonl_response_field_split_per_step_labels_nested(capsys, tmp_path):
    src = tmp_path / "gens.jsonl"
    recs = [
        {"q": {"problem": "P1"}, "out": "Step 1: a\nStep 2: b", "lab": [1, 0.25], "pred": 14, "gold": "14", "model": "m"},
        {"q": {"problem": "P2"}, "out": "Step 1: c", "lab": [False], "pred": "x", "gold": 7, "model": "m"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "o.parquet"
    code, _, _ = ingest(capsys, "jsonl", src, "--prompt-field", "q.problem", "--response-field", "out",
                        "--split", "step-markers", "--label-field", "lab", "--label-kind", "per-step",
                        "--answer-field", "pred", "--gold-field", "gold", "--source", "mygen",
                        "--meta-fields", "model", "-o", out)
    assert code == 0
    r1, r2 = rows_of(out)
    assert r1["steps"] == ["Step 1: a", "Step 2: b"] and r1["reference_scores"] == [1.0, 0.25]
    assert r2["reference_scores"] == [0.0]
    assert (r1["final_answer"], r1["gold_answer"], r2["gold_answer"]) == ("14", "14", "7")
    assert r1["source"] == "mygen" and r1["problem_id"].startswith("mygen:")
    assert json.loads(r1["meta"])["model"] == "m"


def test_parquet_input(capsys, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["A", "B"], "solution": ["x\n\ny\nz", "w"]}), src)
    out = tmp_path / "o.parquet"
    assert ingest(capsys, "jsonl", src, "--prompt-field", "prompt", "--response-field", "solution",
                  "--split", "blank-lines", "-o", out)[0] == 0
    rows = rows_of(out)
    assert [r["steps"] for r in rows] == [["x", "y\nz"], ["w"]]
    assert json.loads(rows[1]["meta"])["origin"] == "in.parquet:row 2"


# ------------------------------------------------------------------------------ bad input

GOOD = {"problem": "P", "steps": ["a", "b"], "label": 0}
MAP = ["--prompt-field", "problem", "--steps-field", "steps", "--label-field", "label"]


def _jsonl(tmp_path: Path, lines: list[bytes]) -> Path:
    p = tmp_path / "data.jsonl"
    p.write_bytes(b"".join(line + b"\n" for line in lines))
    return p


def _ok(obj=None) -> bytes:
    return json.dumps(obj or GOOD).encode()


BAD_LINES = [
    (b'{"problem": "P", "steps": ["a"', "malformed JSON (Expecting ',' delimiter at column 31)"),
    (json.dumps({"steps": ["a"], "label": 0}).encode(), "field 'problem' is missing"),
    (json.dumps({"problem": "P", "label": 0}).encode(), "field 'steps' is missing"),
    (json.dumps({"problem": "P", "steps": [], "label": 0}).encode(), "field 'steps': the solution has no steps"),
    (json.dumps({"problem": "P", "steps": ["a", " "], "label": 0}).encode(), "field 'steps': step 2 of 2 is empty"),
    (json.dumps({"problem": "", "steps": ["a"], "label": 0}).encode(), "field 'problem' is empty"),
    (json.dumps({"problem": 5, "steps": ["a"], "label": 0}).encode(), "field 'problem' must be a string, got int"),
    (json.dumps({"problem": "P", "steps": "a b", "label": 0}).encode(), "field 'steps': expected a list of step strings, got str"),
    (json.dumps({"problem": "P", "steps": ["a", 3], "label": 0}).encode(), "field 'steps': step 2 of 2 is int, not a string"),
    (json.dumps({"problem": "P", "steps": ["a"], "label": 1}).encode(), "first-error label 1 is out of range for 1 step(s) (use -1 when all are right)"),
    (json.dumps({"problem": "P", "steps": ["a"], "label": "0"}).encode(), "first-error label must be an integer step index or -1, got '0'"),
    (json.dumps({"problem": "P", "steps": ["a"]}).encode(), "field 'label' is missing"),
    (json.dumps(["not", "an", "object"]).encode(), "expected a JSON object, got a list"),
    ("{\"problem\": \"caf\u00e9\"}".encode("latin-1"), "not valid UTF-8 (byte 0xe9 at column 17)"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES, ids=[m[:30] for _, m in BAD_LINES])
def test_bad_line_names_file_and_line(capsys, tmp_path, bad, message):
    src = _jsonl(tmp_path, [_ok(), _ok(), bad, _ok()])
    out = tmp_path / "o.parquet"
    code, stdout, err = ingest(capsys, "jsonl", src, *MAP, "-o", out)
    assert code == 2
    assert err.splitlines() == [
        f"stepdpo ingest: error: data.jsonl:3: {message} (use --skip-invalid to skip such records)"
    ]
    assert "Traceback" not in err and stdout == ""
    assert not out.exists()
    assert not list(tmp_path.glob(".o.parquet.*"))  # no temp file left behind


def test_skip_invalid_records_every_bad_line(capsys, tmp_path):
    lines = [_ok()]
    for bad, _ in BAD_LINES:
        lines += [bad, _ok({**GOOD, "problem": f"P{len(lines)}"})]
    src = _jsonl(tmp_path, lines)
    out = tmp_path / "o.parquet"
    code, stdout, _ = ingest(capsys, "jsonl", src, *MAP, "--skip-invalid", "-o", out)
    assert code == 0
    assert len(rows_of(out)) == len(BAD_LINES) + 1
    sidecar = tmp_path / "o.skipped.jsonl"
    skipped = [json.loads(x) for x in sidecar.read_text().splitlines()]
    assert [s["where"] for s in skipped] == [f"data.jsonl:{2 + 2 * i}" for i in range(len(BAD_LINES))]
    assert [s["error"] for s in skipped] == [m for _, m in BAD_LINES]
    assert f"skipped {len(BAD_LINES)} invalid record(s); reasons in {sidecar}" in stdout
    # A clean rerun removes the stale sidecar.
    src.write_bytes(_ok() + b"\n")
    code, stdout, _ = ingest(capsys, "jsonl", src, *MAP, "--skip-invalid", "-o", out)
    assert code == 0 and not sidecar.exists() and "skipped 0" in stdout


def test_gsm8k_bad_answers(capsys, tmp_path):
    src = tmp_path / "g.jsonl"
    src.write_text(
        json.dumps({"question": "Q", "answer": "no marker here"}) + "\n"
        + json.dumps({"question": "Q", "answer": "#### 5"}) + "\n"
        + json.dumps({"question": "Q"}) + "\n"
    )
    code, _, err = ingest(capsys, "gsm8k", src, "-o", tmp_path / "o.parquet")
    assert code == 2
    assert "g.jsonl:1: field 'answer' has no '#### N' final-answer line" in err
    code, stdout, _ = ingest(capsys, "gsm8k", src, "-o", tmp_path / "o.parquet", "--skip-invalid")
    assert code == 0 and "wrote 0 responses" in stdout and "skipped 3" in stdout
    assert read_table(tmp_path / "o.parquet", RESPONSES).num_rows == 0
    errors = [json.loads(x)["error"] for x in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert errors == [
        "field 'answer' has no '#### N' final-answer line",
        "the solution is empty (no lines before '####')",
        "field 'answer' is missing",
    ]


def test_whole_file_errors(capsys, tmp_path):
    out = tmp_path / "o.parquet"
    code, _, err = ingest(capsys, "gsm8k", tmp_path / "nope.jsonl", "-o", out)
    assert code == 2 and err.strip() == f"stepdpo ingest: error: {tmp_path / 'nope.jsonl'}: no such file"

    broken = tmp_path / "items.json"
    broken.write_text('[\n  {"problem": "P", "steps": ["a"]},\n  {"problem": \n]')
    code, _, err = ingest(capsys, "jsonl", broken, "--prompt-field", "problem", "--steps-field", "steps",
                          "-o", out, "--skip-invalid")
    assert code == 2 and err.startswith("stepdpo ingest: error: items.json:4: malformed JSON")

    latin = tmp_path / "latin.json"
    latin.write_bytes('[\n{"problem": "caf\u00e9"}]'.encode("latin-1"))
    code, _, err = ingest(capsys, "jsonl", latin, "--prompt-field", "problem", "--steps-field", "s", "-o", out)
    assert code == 2 and "latin.json:2: not valid UTF-8 (byte 0xe9)" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps-field", "s"], "--prompt-field is required (the field with the problem text)"),
        (["--prompt-field", "p"], "give exactly one of --steps-field (a list of steps) or --response-field (one text, split by --split)"),
        (["--prompt-field", "p", "--response-field", "r", "--split", "bogus"], "--split: unknown splitter 'bogus'; choose one of lines, blank-lines, step-markers, regex:PATTERN, native"),
        (["--prompt-field", "p", "--response-field", "r", "--split", "regex:("], "--split: bad splitter pattern '(': missing ), unterminated subpattern at position 0"),
        (["--prompt-field", "p", "--steps-field", "s", "--split", "blank-lines"], "--split applies to --response-field only; --steps-field is kept as given"),
        (["--prompt-field", "p", "--response-field", "r", "--split", "native"], "--split native needs --steps-field (a list); pick a text splitter"),
        (["--prompt-field", "p", "--steps-field", "s", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_mapping_errors(capsys, tmp_path, args, message):
    src = _jsonl(tmp_path, [_ok()])
    code, _, err = ingest(capsys, "jsonl", src, *args, "-o", tmp_path / "o.parquet")
    assert code == 2
    assert err.strip() == f"stepdpo ingest: error: {message}"


def test_ingest_subprocess_and_help(tmp_path, gsm8k_sample):
    """The real console entry point: exit codes, summary on stdout, and --help with examples."""
    out = tmp_path / "r.parquet"
    done = subprocess.run([sys.executable, "-m", "stepdpo.cli", "ingest", "gsm8k", str(gsm8k_sample),
                           "-o", str(out), "--limit", "5"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"wrote 5 responses to {out} (from {gsm8k_sample})"
    for sub in ("gsm8k", "prm800k", "jsonl"):
        h = subprocess.run([sys.executable, "-m", "stepdpo.cli", "ingest", sub, "--help"],
                           capture_output=True, text=True, check=False)
        assert h.returncode == 0
        assert f"stepdpo ingest {sub} " in h.stdout and "examples:" in h.stdout
        assert "--skip-invalid" in h.stdout and "--limit 100" in h.stdout
    h = subprocess.run([sys.executable, "-m", "stepdpo.cli", "ingest", "jsonl", "--help"],
                       capture_output=True, text=True, check=False).stdout
    for opt in ("--prompt-field", "--steps-field", "--response-field", "--split", "--id-field",
                "--answer-field", "--gold-field", "--label-field", "--label-kind", "--source",
                "--meta-fields"):
        # Every option's help carries an example of its use.
        block = h.split(f"\n  {opt} ", 1)[1].split("\n  --", 1)[0]
        assert "e.g." in block, opt


def test_gsm8k_parquet_release_and_json_lines_in_dot_json(capsys, tmp_path, gsm8k_sample):
    """The hub's Parquet release and `datasets`-style JSON lines in a .json file both read."""
    lines = gsm8k_sample.read_text(encoding="utf-8").splitlines()[:7]
    recs = [json.loads(x) for x in lines]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "test-00000-of-00001.parquet")
    (tmp_path / "lines.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert ingest(capsys, "gsm8k", tmp_path / "test-00000-of-00001.parquet", "-o", a)[0] == 0
    assert ingest(capsys, "gsm8k", tmp_path / "lines.json", "-o", b)[0] == 0
    ra, rb = rows_of(a), rows_of(b)
    assert len(ra) == 7
    assert [r["response_id"] for r in ra] == [r["response_id"] for r in rb]
    assert json.loads(ra[6]["meta"])["origin"] == "test-00000-of-00001.parquet:row 7"
    assert json.loads(rb[6]["meta"])["origin"] == "lines.json:7"


@pytest.mark.parametrize(
    "label,message",
    [
        ([1, 0], None),
        ([1], "field 'lab': 1 value(s) for 2 step(s)"),
        ([1, 2], "field 'lab': value 2 at step 2 is not in [0, 1], true/false or null"),
        ([1, "yes"], "field 'lab': value 'yes' at step 2 is not in [0, 1], true/false or null"),
        (3, "per-step label must be a list with one value per step, got int"),
    ],
)
def test_per_step_label_errors(capsys, tmp_path, label, message):
    src = _jsonl(tmp_path, [json.dumps({"p": "P", "s": ["a", "b"], "lab": label}).encode()])
    code, _, err = ingest(capsys, "jsonl", src, "--prompt-field", "p", "--steps-field", "s",
                          "--label-field", "lab", "--label-kind", "per-step", "-o", tmp_path / "o.parquet")
    if message is None:
        assert code == 0 and rows_of(tmp_path / "o.parquet")[0]["reference_scores"] == [1.0, 0.0]
    else:
        assert code == 2
        assert err.strip() == f"stepdpo ingest: error: data.jsonl:1: {message} (use --skip-invalid to skip such records)"


def test_a_folder_is_named_as_a_folder(capsys, tmp_path):
    """A folder (e.g. a downloaded dataset) was reported as 'no such file'."""
    code, _, err = ingest(capsys, "gsm8k", tmp_path, "-o", tmp_path / "o.parquet")
    assert code == 2 and f"{tmp_path}: is a folder; give its files" in err


# ------------------------------------------------------------------ one id per problem (#16 item 8)


def test_a_problem_id_reused_for_another_problem_is_refused_or_skipped(capsys, tmp_path):
    """Two datasets merged with colliding ids: best-worst once paired "What is 1+1?" with the
    7×8 solution because both rows said problem 'p1'."""
    items = [
        {"id": "p1", "problem": "What is 1+1?", "steps": ["1+1=2", "The answer is 2"]},
        {"id": "p1", "problem": "What is 1+1?", "steps": ["1+1=3", "The answer is 3"]},  # same problem
        {"id": "p1", "problem": "What is 7*8?", "steps": ["7*8=56", "The answer is 56"]},  # reused id
        {"id": "p2", "problem": "What is 7*8?", "steps": ["7*8=54", "The answer is 54"]},
    ]
    src = tmp_path / "merged.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    args = ("jsonl", src, "--prompt-field", "problem", "--steps-field", "steps", "--id-field", "id")
    code, _, err = ingest(capsys, *args, "-o", tmp_path / "o.parquet")
    assert code == 2
    assert err.strip() == ("stepdpo ingest: error: merged.jsonl:3: problem id 'p1' was used for a "
                           "different problem text at merged.jsonl:1; give each problem its own id "
                           "(use --skip-invalid to skip such records)")
    assert not (tmp_path / "o.parquet").exists()
    code, out, _ = ingest(capsys, *args, "-o", tmp_path / "o.parquet", "--skip-invalid")
    assert code == 0
    assert "problem ids reused for a different problem text: 1 record(s), skipped" in out
    assert [(r["problem_id"], r["prompt"]) for r in rows_of(tmp_path / "o.parquet")] == [
        ("p1", "What is 1+1?"), ("p1", "What is 1+1?"), ("p2", "What is 7*8?")]
    (skip,) = [json.loads(x) for x in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert skip["where"] == "merged.jsonl:3" and "problem id 'p1'" in skip["error"]


# ------------------------------------------------------------------ PRM800K annotations (#16 item 12)


def test_prm800k_every_human_annotation_is_its_own_row(capsys, tmp_path):
    """Quality-control questions: two labelers rate one solution. Both rows had one response_id
    and `label --judge reference` kept one of them without a word."""
    first = json.loads(PRM2.read_text().splitlines()[0])
    second = json.loads(json.dumps(first))
    second["labeler"], second["timestamp"] = "another-labeler", "2022-08-01T10:00:00"
    second["label"]["steps"][0]["completions"][0]["rating"] = 1  # they disagree on step 1
    third = json.loads(json.dumps(second))  # the same annotation twice: a true duplicate
    src = tmp_path / "qc.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in (first, second, third)))
    out = tmp_path / "qc.parquet"
    code, stdout, _ = ingest(capsys, "prm800k", src, "-o", out)
    assert code == 0
    a, b, c = rows_of(out)
    assert a["steps"] == b["steps"] and a["prompt"] == b["prompt"]
    assert a["response_id"] != b["response_id"] and b["response_id"] == c["response_id"]
    assert (a["reference_scores"][0], b["reference_scores"][0]) == (0.5, 1.0)
    assert "human annotations: 3 rows, 1 of them another annotation of a solution already read" in stdout
    assert "duplicate responses (same problem and steps): 1" in stdout
    # The reference judge passes both annotations through: two rows, one per labeler.
    run = tmp_path / "run"
    assert main(["label", str(out), "--judge", "reference", "-o", str(run), "--no-cache"]) == 0
    capsys.readouterr()
    from schemas import STEP_SCORES

    labeled = read_table(run, STEP_SCORES).to_pylist()
    assert sorted(json.loads(r["meta"])["labeler"] for r in labeled) == sorted(
        [first["labeler"], "another-labeler"])
    assert sorted(r["scores"][0] for r in labeled) == [0.5, 1.0]
