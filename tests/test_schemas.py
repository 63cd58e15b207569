"""schemas/: versioned Parquet contracts, ids, converters to TRL rows, aggregation."""

from __future__ import annotations

import hashlib
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import (
    AGGREGATIONS,
    PAIRS,
    RESPONSES,
    STEP_SCORES,
    UserError,
    aggregate,
    first_error,
    format_completion,
    format_prompt,
    from_rows,
    pair_id,
    pair_to_preference,
    pair_to_stepwise_supervision,
    read_kind,
    read_table,
    response_id,
    scores_to_stepwise_supervision,
    shard_of,
    step_char_spans,
    validate,
    write_table,
)
from schemas.tables import SCHEMA_KEY


def response_row(k: int = 0, **over) -> dict:
    steps = [f"step {k}.a", f"step {k}.b"]
    row = {
        "response_id": response_id(f"problem {k}", steps),
        "problem_id": f"p{k}",
        "source": "test",
        "prompt": f"problem {k}",
        "steps": steps,
        "final_answer": "1",
        "gold_answer": "1",
        "reference_scores": [1.0, None],
        "meta": '{"a":1}',
    }
    row.update(over)
    return row


def score_row(k: int = 0, **over) -> dict:
    row = response_row(k)
    row.update(
        judge="gsm8k-calc", judge_fingerprint="fp", scores=[0.9, 0.1], raw="{}", status="ok",
        error=None, attempts=1, input_tokens=10, output_tokens=2, cached_tokens=0, cost_usd=0.0,
        latency_s=0.01, created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    row.update(over)
    return row


def pair_row(**over) -> dict:
    row = {
        "pair_id": pair_id("P", ["s1"], ["good"], ["bad"]), "problem_id": "p", "prompt": "P",
        "prefix_steps": ["s1"], "chosen_steps": ["good", "end"], "rejected_steps": ["bad"],
        "chosen_scores": [0.9, 0.8], "rejected_scores": [0.1], "chosen_reward": 0.72,
        "rejected_reward": 0.1, "strategy": "first-error", "judge_fingerprint": "fp",
        "chosen_response_id": "c", "rejected_response_id": "r",
    }
    row.update(over)
    return row


# ------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("kind,make", [(RESPONSES, response_row), (STEP_SCORES, score_row), (PAIRS, pair_row)])
def test_write_read_round_trip(tmp_path, kind, make):
    rows = [make(k) for k in range(3)] if make is not pair_row else [pair_row(), pair_row(pair_id="x")]
    path = write_table(from_rows(rows, kind), tmp_path / "f.parquet", kind)
    assert pq.read_schema(path).metadata[SCHEMA_KEY] == kind.tag.encode()
    assert read_kind(path) == kind.name
    back = read_table(path, kind).to_pylist()
    if kind is PAIRS:  # optional ref log-prob columns come back as nulls
        assert back[0]["ref_chosen_step_logps"] is None
        back = [{k: v for k, v in r.items() if not k.startswith("ref_")} for r in back]
    assert back == rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_folder_of_shards_and_partial_columns(tmp_path):
    for i in range(3):
        write_table(from_rows([response_row(2 * i), response_row(2 * i + 1)], RESPONSES),
                    tmp_path / f"part-{i:05d}.parquet", RESPONSES)
    (tmp_path / ".part-00003.parquet.x.tmp").write_bytes(b"half-written")
    table = read_table(tmp_path, RESPONSES, columns=["response_id", "steps"])
    assert table.column_names == ["response_id", "steps"]
    assert table.num_rows == 6
    assert table.column("steps").to_pylist()[5] == ["step 5.a", "step 5.b"]
    with pytest.raises(UserError, match=r"^'responses' files have no column\(s\) scores$"):
        read_table(tmp_path, RESPONSES, columns=["scores"])


def test_partial_read_of_optional_column_missing_from_file(tmp_path):
    table = from_rows([pair_row()], PAIRS).drop_columns(["ref_chosen_step_logps", "ref_rejected_step_logps"])
    path = tmp_path / "pairs.parquet"
    pq.write_table(table, path)  # an older writer that never added the optional columns
    got = read_table(path, PAIRS, columns=["pair_id", "ref_chosen_step_logps"])
    assert got.to_pylist() == [{"pair_id": row, "ref_chosen_step_logps": None}
                               for row in [pair_row()["pair_id"]]]


def _stamped(table: pa.Table, tag: bytes) -> pa.Table:
    return table.replace_schema_metadata({SCHEMA_KEY: tag})


def test_version_mismatch_message(tmp_path):
    path = tmp_path / "old.parquet"
    pq.write_table(_stamped(from_rows([response_row()], RESPONSES), b"responses/0"), path)
    with pytest.raises(UserError) as exc:
        read_table(path, RESPONSES)
    assert str(exc.value) == (
        f"{path}: 'responses' schema version 0 is not supported by this stepdpo (it reads "
        "version 1); re-create the file with this version"
    )


def test_wrong_kind_message(tmp_path):
    path = write_table(from_rows([response_row()], RESPONSES), tmp_path / "r.parquet", RESPONSES)
    with pytest.raises(UserError) as exc:
        read_table(path, PAIRS)
    assert str(exc.value) == f"{path}: this is a 'responses' file, but a 'pairs' file is needed here"


def test_foreign_and_unreadable_files(tmp_path):
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1]}), foreign)
    with pytest.raises(UserError, match=r"not a stepdpo file \(no 'stepdpo.schema' metadata\) and its "
                                        r"columns do not make a 'responses' table \(missing response_id, "
                                        r"problem_id, source, prompt, …\); keep every column"):
        read_table(foreign, RESPONSES)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(UserError, match=r"junk.parquet: not a readable Parquet file"):
        read_kind(junk)
    with pytest.raises(UserError, match=r"nope: no such file or folder$"):
        read_table(tmp_path / "nope", RESPONSES)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty: folder has no .parquet files$"):
        read_table(empty, RESPONSES)


def test_missing_column_message(tmp_path):
    path = tmp_path / "m.parquet"
    table = from_rows([response_row()], RESPONSES).drop_columns(["steps"])
    pq.write_table(_stamped(table, b"responses/1"), path)
    with pytest.raises(UserError) as exc:
        read_table(path, RESPONSES)
    assert str(exc.value) == f"{path}: 'responses' file is missing the column 'steps'"


def test_null_in_required_column():
    with pytest.raises(UserError) as exc:
        from_rows([response_row(), response_row(1, prompt=None)], RESPONSES)
    assert str(exc.value) == "column 'prompt' has 1 null value(s); it is required"
    table = pa.table({f.name: pa.array([None], f.type) for f in RESPONSES.schema})
    with pytest.raises(UserError, match="^column 'response_id' has 1 null value"):
        validate(table, RESPONSES)


def test_wrong_type_message():
    table = from_rows([response_row()], RESPONSES).set_column(
        4, "steps", pa.array(["not a list"])
    )
    with pytest.raises(UserError, match=r"^column 'steps' has type string, expected list<item: string>"):
        validate(table, RESPONSES)


def test_write_is_atomic_on_bad_table(tmp_path):
    good = write_table(from_rows([response_row()], RESPONSES), tmp_path / "r.parquet", RESPONSES)
    before = good.read_bytes()
    bad = from_rows([response_row()], RESPONSES).drop_columns(["prompt"])
    with pytest.raises(UserError, match="missing the column 'prompt'"):
        write_table(bad, good, RESPONSES)
    assert good.read_bytes() == before


def test_from_rows_fills_nullable_and_rejects_bad_values():
    table = from_rows([{"response_id": "r", "prompt": "P", "steps": ["a"]}], RESPONSES)
    row = table.to_pylist()[0]
    assert row["meta"] is None and row["reference_scores"] is None
    with pytest.raises(UserError) as exc:
        from_rows([response_row(), response_row(steps="abc")], RESPONSES)
    assert str(exc.value) == "cannot build a 'responses' table: row 1: 'steps' must be a list, not a string"
    with pytest.raises(UserError, match="^cannot build a 'responses' table: Could not convert '1'"):
        from_rows([response_row(reference_scores=["1", None])], RESPONSES)


def _oracle(rows: list[dict], kind) -> pa.Table:
    """What ``from_rows`` built before it went through pyarrow.json: ``pa.array`` per column."""
    return validate(pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in kind.schema},
                                         schema=kind.schema), kind)


def varied_score_rows(n: int = 300, seed: int = 7) -> list[dict]:
    """step_scores rows with every kind of value a shard meets: unicode beyond the BMP, escapes,
    nulls at every level, floats of every magnitude, int64 extremes, aware datetimes of any offset
    and naive ones, empty lists."""
    import random
    import struct
    from datetime import timedelta

    rng = random.Random(seed)
    texts = ["", "plain", "quote \" and \\ and \n\t\r\x00\x1f", "ünïcødé 数学 ∑ 𝔼[x] 🙂", "a" * 5000, "\u2028\u2029"]

    def any_float():
        while True:
            x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
            if math.isfinite(x):
                return rng.choice([x, rng.random(), 0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1])

    rows = []
    for k in range(n):
        when = datetime(2026, 11, 30, 12, 0, 0, rng.randrange(10**6), tzinfo=timezone(timedelta(minutes=rng.choice(
            [0, 330, -480]))))
        rows.append(score_row(
            k, prompt=rng.choice(texts) + str(k), steps=[rng.choice(texts) for _ in range(rng.randrange(1, 5))],
            meta=rng.choice([None, '{"a": "ü"}']), reference_scores=rng.choice([None, [], [None, any_float()]]),
            scores=rng.choice([None, [any_float() for _ in range(3)], [None]]), raw=rng.choice([None] + texts),
            error=rng.choice([None, "Timeout: 🙂"]), attempts=rng.choice([None, 0, 2**31 - 1]),
            input_tokens=rng.choice([None, 0, 2**63 - 1, -(2**63)]), cost_usd=rng.choice([None, any_float(), 3]),
            latency_s=rng.choice([None, any_float()]),
            created_at=rng.choice([None, when, when.replace(tzinfo=None)])))
    return rows


def test_from_rows_equals_pa_array_on_every_kind_of_value():
    """from_rows gives the table ``pa.array`` gives, value for value (floats bit-exact); values
    JSON cannot carry (NaN, inf, numpy numbers) take ``pa.array``'s route with the same result.
    (That the varied rows really go through pyarrow.json: the no-pandas test below.)"""
    import numpy as np

    rows = varied_score_rows()
    built = from_rows(rows, STEP_SCORES)
    assert built.equals(_oracle(rows, STEP_SCORES)) and built.schema.equals(STEP_SCORES.stamped, check_metadata=True)
    for special in (float("nan"), float("inf"), np.float32(0.5)):  # JSON has no form: pa.array's route
        odd = [score_row(0, scores=[special, 0.5]), score_row(1)]
        assert repr(from_rows(odd, STEP_SCORES).to_pylist()) == repr(_oracle(odd, STEP_SCORES).to_pylist())  # nan
    odd = [score_row(0, input_tokens=np.int64(7))]
    assert from_rows(odd, STEP_SCORES).column("input_tokens").to_pylist() == [7]
    assert from_rows([], STEP_SCORES).equals(_oracle([], STEP_SCORES))
    pairs = [pair_row(), pair_row(prefix_steps=[], chosen_scores=None)]
    assert from_rows(pairs, PAIRS).equals(_oracle(pairs, PAIRS))


def test_from_rows_refuses_what_pa_array_refuses():
    """The JSON reader never coerces: each value of the wrong type still gets pa.array's error."""
    cases = [(score_row(0, problem_id=5), "Expected bytes, got a 'int' object"),
             (score_row(0, attempts=True), "Expected integer, got bool"),
             (score_row(0, attempts=2**31), "Value 2147483648 too large to fit in C integer type"),
             (score_row(0, input_tokens=2**64), "Python int too large"),
             (score_row(0, cost_usd="0.1"), "Could not convert '0.1'"),
             (score_row(0, meta={"a": 1}), "Expected bytes, got a 'dict' object"),
             (score_row(0, created_at="2026-11-30T12:00:00+00:00"), "")]
    for row, message in cases:
        with pytest.raises(Exception) as exc:
            _oracle([row], STEP_SCORES)
        arrow = isinstance(exc.value, (pa.ArrowInvalid, pa.ArrowTypeError))
        with pytest.raises(UserError if arrow else type(exc.value)) as mine:
            from_rows([row], STEP_SCORES)
        assert message in str(exc.value)
        assert str(mine.value) == (f"cannot build a 'step_scores' table: {exc.value}" if arrow else str(exc.value))


def test_from_rows_and_write_table_never_import_pandas(tmp_path):
    """pyarrow imports pandas (when installed) at its first pa.array of Python values: ~0.17 s in
    the middle of `stepdpo label`. Building and writing the varied rows must not be that first
    time, and the shard read back is the table pa.array builds."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    code = f"""
import json, sys
from schemas.tables import STEP_SCORES, from_rows, write_table
from tests.test_schemas import varied_score_rows
write_table(from_rows(varied_score_rows(), STEP_SCORES), {str(tmp_path / "s.parquet")!r}, STEP_SCORES)
print(json.dumps({{"pandas": "pandas" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"pandas": False}
    assert read_table(tmp_path / "s.parquet", STEP_SCORES).equals(_oracle(varied_score_rows(), STEP_SCORES))


# ------------------------------------------------------------------------------ ids


def test_ids_are_stable_and_content_based():
    assert response_id("P", ["a", "b"]) == response_id("P", ["a", "b"])
    assert response_id("P", ["a", "b"]) != response_id("P", ["a b"])
    assert response_id("P", ["a", "b"]) != response_id("P", ["b", "a"])
    # Fixed value: ids must not change between versions, or every cache and resume breaks.
    expected = hashlib.sha256(b'{"prompt":"What is 1+1?","steps":["1+1=2."]}').hexdigest()[:24]
    assert response_id("What is 1+1?", ["1+1=2."]) == expected == "c1fc71a80e9696c468e1a101"
    assert len({shard_of(f"k{i}", 4) for i in range(100)}) == 4
    assert shard_of("anything", 1) == 0
    assert shard_of("k1", 7) == shard_of("k1", 7)


# ------------------------------------------------------------------------------ converters


def test_format_and_spans_tile_the_completion():
    steps = ["a = 1", "b = 22", "c"]
    text = format_completion(steps)
    assert text == "a = 1\nb = 22\nc"
    spans = step_char_spans(steps)
    assert spans == [(0, 6), (6, 13), (13, 14)]
    assert "".join(text[a:b] for a, b in spans) == text
    assert [text[a:b].rstrip("\n") for a, b in spans] == steps
    assert format_prompt("P", ["s1", "s2"]) == "P\ns1\ns2\n"
    assert format_prompt("P") == "P\n"
    assert format_completion(["x", "y"], sep="\n\n") == "x\n\ny"
    assert step_char_spans([]) == []


def test_pair_to_preference():
    row = pair_row()
    assert pair_to_preference(row) == {"prompt": "P\ns1\n", "chosen": "good\nend", "rejected": "bad"}
    assert pair_to_preference({**row, "prefix_steps": []})["prompt"] == "P\n"


def test_stepwise_supervision_converters():
    assert pair_to_stepwise_supervision(pair_row()) == [
        {"prompt": "P", "completions": ["s1", "good", "end"], "labels": [True, True, True]},
        {"prompt": "P", "completions": ["s1", "bad"], "labels": [True, False]},
    ]
    row = score_row(scores=[0.9, None])
    assert scores_to_stepwise_supervision(row) == {
        "prompt": "problem 0", "completions": ["step 0.a", "step 0.b"], "labels": [True, None]
    }
    ref = scores_to_stepwise_supervision(response_row(reference_scores=[0.5, 0.0]), field="reference_scores")
    assert ref["labels"] == [True, False]  # 0.5 (PRM800K neutral) counts as correct at 0.5
    assert scores_to_stepwise_supervision(response_row(reference_scores=None), field="reference_scores")["labels"] == [None, None]


# ------------------------------------------------------------------------------ aggregation


@pytest.mark.parametrize(
    "how,expected",
    [
        ("product", 0.9 * 0.5 * 0.8),
        ("min", 0.5),
        ("last", 0.8),
        ("mean", (0.9 + 0.5 + 0.8) / 3),
        ("weighted_sum", (1 * 0.9 + 2 * 0.5 + 3 * 0.8) / 6),
        ("harmonic_mean", 3 / (1 / 0.9 + 1 / 0.5 + 1 / 0.8)),
        ("geometric_mean", (0.9 * 0.5 * 0.8) ** (1 / 3)),
    ],
)
def test_aggregations(how, expected):
    assert aggregate([0.9, 0.5, 0.8], how) == pytest.approx(expected)
    # Null (and NaN) scores are steps the judge did not score: skipped, not zero.
    assert aggregate([0.9, None, 0.5, float("nan"), 0.8], how) == pytest.approx(expected)


def test_aggregation_edge_cases():
    assert set(AGGREGATIONS) == {"product", "min", "last", "mean", "weighted_sum", "harmonic_mean", "geometric_mean"}
    for how in AGGREGATIONS:
        assert aggregate(None, how) is None
        assert aggregate([], how) is None
        assert aggregate([None, None], how) is None
        assert 0.0 <= aggregate([0.0, 1.0], how) <= 1.0
    # A zero score stays finite for the means thanks to the floor.
    assert aggregate([0.0, 1.0], "harmonic_mean") == pytest.approx(2 / (1 / 1e-6 + 1 / (1 - 1e-6)))
    assert math.isfinite(aggregate([0.0], "geometric_mean"))
    assert aggregate([0.0, 1.0], "product") == 0.0
    with pytest.raises(ValueError, match="^unknown aggregation 'median'; choose one of product, "):
        aggregate([1.0], "median")


def test_first_error():
    assert first_error([0.9, 0.8, 0.2, 0.1]) == 2
    assert first_error([0.9, None, 0.6]) == -1
    assert first_error([None, 0.3]) == 1
    assert first_error([]) == -1 and first_error(None) == -1
    assert first_error([0.6, 0.55], threshold=0.6) == 1
    assert first_error([float("nan"), 0.1]) == 1


def test_lazy_package_exports():
    """`import schemas` defers pyarrow, yet every exported name resolves to the real object."""
    import schemas
    import schemas.aggregate
    import schemas.tables

    assert callable(schemas.aggregate) and schemas.aggregate is aggregate
    for name in schemas.__all__:
        assert getattr(schemas, name) is not None
    assert schemas.read_table is schemas.tables.read_table
    assert set(schemas.__all__) <= set(dir(schemas))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = schemas.nope


def test_empty_or_null_steps_are_refused_on_read_and_write(tmp_path):
    """A hand-made file with no steps (or a null step) crashed `label --judge gsm8k-calc`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from schemas.errors import UserError
    from schemas.tables import RESPONSES, read_table, validate

    base = {"response_id": "r", "problem_id": "p", "source": "t", "prompt": "Q", "final_answer": None,
            "gold_answer": None, "reference_scores": None, "meta": None}
    for steps, message in (([], "'steps' is empty"), (["a", None], "null step")):
        table = pa.Table.from_pylist([{**base, "steps": ["ok"]}, {**base, "steps": steps}], schema=RESPONSES.stamped)
        with pytest.raises(UserError, match=message):
            validate(table, RESPONSES)
        pq.write_table(table, tmp_path / "bad.parquet")
        with pytest.raises(UserError, match="bad.parquet"):
            read_table(tmp_path / "bad.parquet", RESPONSES)
    validate(pa.Table.from_pylist([{**base, "steps": ["a"]}], schema=RESPONSES.stamped), RESPONSES)


def test_steps_check_reads_sliced_and_chunked_columns_right():
    """The steps check reads list offsets (no pyarrow.compute): a slice hides the rows outside it,
    chunks count on from each other, and the first empty row's index is the table's."""
    base = response_row()
    rows = [dict(base, steps=s) for s in (["a"], ["b", None], ["c"], ["d"], [], ["e"], [])]
    whole = pa.Table.from_pylist(rows, schema=RESPONSES.stamped)
    assert validate(whole.slice(2, 2), RESPONSES).num_rows == 2  # the null step and the empties sliced away
    with pytest.raises(UserError, match=r"null step"):
        validate(whole.slice(0, 4), RESPONSES)
    chunked = pa.concat_tables([whole.slice(2, 2), whole.slice(3, 4)])  # ["c"] ["d"] | ["d"] [] ["e"] []
    assert chunked.column("steps").num_chunks == 2
    with pytest.raises(UserError, match=r"^'responses' row 3: 'steps' is empty \(2 row\(s\) with no step\)$"):
        validate(chunked, RESPONSES)


def test_require_complete_accepts_whole_folders_only(tmp_path):
    """Readers' one gate for folders of shards (pairs, precomputed pairs)."""
    import json

    from schemas.folders import require_complete, staged_folder, write_manifest

    folder = tmp_path / "pairs"
    with staged_folder(folder) as staging:
        (staging / "part-00000.parquet").write_bytes(b"x")
        assert not folder.exists()  # nothing is visible before the swap
        write_manifest(staging, "pairs.json", {"aggregation": "min"})
    assert require_complete(folder, "pairs.json")["aggregation"] == "min"
    assert require_complete(folder / "part-00000.parquet", "pairs.json") is None  # a file is whole
    # A manifest written before `complete` existed: accepted when its shard list matches.
    (folder / "pairs.json").write_text(json.dumps({"shards": ["part-00000.parquet"]}))
    assert require_complete(folder, "pairs.json") == {"shards": ["part-00000.parquet"]}
    (folder / "part-00001.parquet").write_bytes(b"x")
    with pytest.raises(UserError, match="not listed in pairs.json"):
        require_complete(folder, "pairs.json")
    (folder / "pairs.json").write_text(json.dumps({"shards": ["part-00000.parquet", "part-00001.parquet",
                                                             "part-00002.parquet"]}))
    with pytest.raises(UserError, match=r"1 shard\(s\) listed in pairs.json are missing \(part-00002"):
        require_complete(folder, "pairs.json")
    (folder / "precompute.json").write_text(json.dumps({"complete": False}))
    (folder / "pairs.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        require_complete(folder, ("pairs.json", "precompute.json"), fix="rerun it")
    (folder / "precompute.json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON manifest"):
        require_complete(folder, "precompute.json")
    # An error inside the staged block leaves the old folder as it was and no staging behind.
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(RuntimeError), staged_folder(folder) as staging:
        (staging / "part-00000.parquet").write_bytes(b"new")
        raise RuntimeError("killed")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["pairs"]


def test_files_saved_again_by_pandas_are_read_when_their_columns_fit(tmp_path, capsys):
    """A `responses` subset written by pandas lost the stamp and `label` refused it as "not a
    stepdpo file"; the columns are all there, so read it (stamped on the way) and say so."""
    import pandas as pd

    from stepdpo.cli import main

    rows = [response_row(i, prompt=f"What is {i}+1?") for i in range(4)]
    ours = write_table(from_rows(rows, RESPONSES), tmp_path / "r.parquet", RESPONSES)
    df = pd.read_parquet(ours)
    subset = tmp_path / "subset.parquet"
    df[df["prompt"] != "What is 0+1?"].to_parquet(subset)  # pandas: new schema, no stamp
    assert b"stepdpo.schema" not in (pq.read_schema(subset).metadata or {})
    assert read_kind(subset) == "responses"
    table = read_table(subset, RESPONSES)
    assert table.num_rows == 3 and table.schema.metadata[b"stepdpo.schema"] == b"responses/1"
    assert "subset.parquet: no 'stepdpo.schema' stamp (saved by another tool?); its columns match " \
           "'responses/1', so it is read as such" in capsys.readouterr().err
    # The whole path accepts it: label it and inspect the run.
    run = tmp_path / "run"
    assert main(["label", str(subset), "--judge", "gsm8k-calc", "-o", str(run), "--no-cache"]) == 0
    assert main(["inspect", str(run), "--json"]) == 0
    assert '"rows": 3' in capsys.readouterr().out
    # Columns dropped on the way: one line naming what is missing and the fix.
    df.drop(columns=["steps"]).to_parquet(tmp_path / "nosteps.parquet")
    assert main(["label", str(tmp_path / "nosteps.parquet"), "--judge", "gsm8k-calc",
                 "-o", str(tmp_path / "run2"), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"stepdpo label: error: {tmp_path / 'nosteps.parquet'}: not a stepdpo file (no "
                   "'stepdpo.schema' metadata) and its columns do not make a 'responses' table "
                   "(missing steps); keep every column when you filter a stepdpo file with "
                   "pandas/polars/duckdb, or turn your own data into responses with "
                   "`stepdpo ingest jsonl`")
