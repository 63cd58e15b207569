"""`label --batch` and `generate --batch` close with one summary layout (stepdpo/batch_summary.py):
the counts from run.json's last run, the cost split between batch and online price, and the
line that says how to collect batches still running."""

from __future__ import annotations

from stepdpo.batch_summary import batch_lines, online_text

RUN = {"batches_submitted": ["k1", "k2"], "batches_attached": ["k0"], "cache_hits": 3, "cost_usd": 0.25,
       "batches_pending": []}


def test_the_summary_counts_and_prices():
    assert batch_lines("label --batch", "10 rows in run (ok 8, error 2)", RUN, "run", skipped=4) == [
        "label --batch: 10 rows in run (ok 8, error 2); this run: 2 batch(es) submitted, 1 attached, 4 already "
        "done, 3 from cache, $0.2500 at batch price"]
    lines = batch_lines("generate --batch", "8 of 8 samples in g (8 in the folder)", RUN, "g", skipped=0,
                        drawn="5 drawn in batches, ", online_cost=0.05,
                        online="drew 3 sample(s) that failed in a batch online first: " + online_text(3, 0.05))
    assert lines == [
        "generate --batch: 8 of 8 samples in g (8 in the folder); this run: 2 batch(es) submitted, 1 attached, "
        "5 drawn in batches, 0 already done, 3 from cache, $0.2500 ($0.2000 at batch price + $0.0500 online)",
        "generate --batch: drew 3 sample(s) that failed in a batch online first: 3 request(s), $0.0500 at online "
        "price"]


def test_no_price_and_batches_still_running():
    run = {**RUN, "cost_usd": None, "batches_pending": ["k1", "k2"]}
    lines = batch_lines("label --batch", "0 rows in run (ok 0, error 0)", run, "run", skipped=0)
    assert lines[0].endswith("cost unknown (no price for this model: --prices FILE)")
    assert lines[1] == ("label --batch: 2 batch(es) still running; rerun the same command to collect them "
                        "(`stepdpo batches run` shows them)")
    assert online_text(2, None) == "2 request(s), cost unknown (no price for this model)"
