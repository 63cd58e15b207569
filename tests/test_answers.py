"""Answer extraction and checking: a table of tricky answers with known verdicts, math-verify
off the main thread, and bad answers that must never raise."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from fractions import Fraction

import pytest

from labeler.answers import (
    AnswerCheck,
    answer_of_steps,
    check_answer,
    extract_answer,
    is_correct,
    numeric_value,
    symbolic_equal,
)

EXTRACT = [
    ("so the total is \\boxed{18}.", "18"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{\\dfrac{\\sqrt{3}}{2}} done", "\\dfrac{\\sqrt{3}}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5.", "5"),
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,000\n", "1,000"),
    ("The answer is 18.", "18"),
    ("Step 3: The final answer is $\\frac{3}{4}$ of the pie.", "\\frac{3}{4}"),
    ("So the answer is: **-5**", "-5"),
    ("The answer is 2.5.", "2.5"),
    ("the answer is 18 eggs.\nThe answer is 20 eggs.", "20 eggs"),
    # A cut-off solution states nothing: an open box is not an answer.
    ("Step 1: 3 * 4 = 12\nStep 2: so \\boxed{\\frac{12}{", None),
    ("Step 1: 3 * 4 = 12", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


CHECK = [
    # pred, gold, correct, method
    ("1,000", "1000", True, "numeric"),
    ("1000", "1,000", True, "numeric"),
    ("$1,000.00", "1000", True, "numeric"),
    ("1001", "1000", False, "numeric"),
    ("10001", "10000", False, "numeric"),
    ("\\frac{1}{2}", "0.5", True, "numeric"),
    ("0.5", "\\frac{1}{2}", True, "numeric"),
    ("1/2", "0.5", True, "numeric"),
    ("-\\frac{3}{4}", "-0.75", True, "numeric"),
    ("0.33", "1/3", True, "numeric"),       # the gold value rounded to the 2 decimals shown
    ("0.3", "1/3", False, "numeric"),       # one decimal is not a rounding we accept
    ("0.34", "1/3", False, "numeric"),
    ("18 eggs", "18", True, "numeric"),
    ("18 \\text{ dollars}", "18", True, "numeric"),
    ("$18", "18", True, "numeric"),
    ("25\\%", "25", True, "numeric"),
    ("25%", "25", True, "numeric"),
    ("90^\\circ", "90", True, "numeric"),
    ("-5", "-5", True, "numeric"),
    ("−5", "-5", True, "numeric"),          # unicode minus
    ("-$5", "-5", True, "numeric"),
    ("5", "-5", False, "numeric"),
    ("x = 3", "3", True, "numeric"),
    ("3.0", "3", True, "numeric"),
    ("2\\sqrt{3}", "\\sqrt{12}", True, "math-verify"),
    ("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", True, "math-verify"),
    ("\\frac{\\pi}{2}", "\\pi/2", True, "math-verify"),
    ("\\{2, 1\\}", "\\{1,2\\}", True, "math-verify"),
    ("(1,2)", "(1, 2)", True, "math-verify"),
    ("\\sqrt{3}", "\\sqrt{2}", False, "math-verify"),
    ("(A)", "A", True, "math-verify"),
    (None, "18", False, "no-answer"),
    ("  ", "18", False, "no-answer"),
    ("18", None, None, "no-gold"),
]


@pytest.mark.parametrize(("pred", "gold", "correct", "method"), CHECK)
def test_check_answer_table(pred, gold, correct, method):
    got = check_answer(pred, gold)
    assert (got.correct, got.method) == (correct, method), got


def test_numeric_value_is_exact():
    assert numeric_value("0.1") + numeric_value("0.2") == numeric_value("0.3")
    assert numeric_value("\\dfrac{3}{4}") == Fraction(3, 4)
    assert numeric_value("1,234,567") == 1234567
    assert numeric_value("12,34") is None          # not a thousands grouping
    assert numeric_value("\\sqrt{2}") is None
    assert numeric_value("1/0") is None


def test_relative_tolerance_is_opt_in():
    assert check_answer("3.1416", "3.14159265").correct is True      # rounding shown
    assert check_answer("3.14", "3.1416").correct is True
    assert check_answer("100.05", "100").correct is False
    assert check_answer("100.05", "100", rel_tol=1e-3).correct is True


BAD = ["\\boxed{", "}}}{{{", "\\frac{1}{0}", "x" * 5000, "\\sqrt{-", "9^{9^{9^{9}}}", "\x00\xff",
       "$$", "\\begin{pmatrix} 1 \\\\", "1e999999", "nan", "inf", "((((((((((1"]


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_answer_never_raises(bad):
    for pred, gold in ((bad, "18"), ("18", bad), (bad, bad)):
        got = check_answer(pred, gold, timeout_s=1)
        assert isinstance(got, AnswerCheck) and got.correct in (True, False)
    assert is_correct(bad, "18", timeout_s=1) in (True, False)


def test_is_correct_and_answer_of_steps():
    assert is_correct("Step 1: 2+2=4\nStep 2: so \\boxed{4}", "4")
    assert not is_correct("Step 1: 2+2=4\nStep 2: so \\boxed{5}", "4")
    assert not is_correct("Step 1: 2+2=4", "4")             # cut off: no answer is wrong
    assert answer_of_steps(["a", "The answer is 7."]) == "7"
    assert answer_of_steps(["a", "The answer is 7."], final_answer="8") == "8"


def test_math_verify_works_off_the_main_thread_and_in_asyncio():
    """In a thread (signal.alarm is main-thread only) the call goes to a worker process; the
    verdicts are the same as on the main thread, and the timeout holds there too."""
    cases = [("\\sqrt{12}", "2\\sqrt{3}", True), ("\\sqrt{2}", "\\sqrt{3}", False)]
    main = [symbolic_equal(g, p)[0] for g, p, _ in cases]
    out: dict[str, list] = {}

    def in_thread() -> None:
        out["thread"] = [check_answer(p, g).correct for g, p, _ in cases]
        start = time.monotonic()
        out["slow"] = check_answer("9^{9^{9^{9}}}", "18", timeout_s=1)
        out["slow_s"] = time.monotonic() - start

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(120)
    assert main == [c for *_, c in cases]
    assert out["thread"] == [c for *_, c in cases]
    assert out["slow"].correct is False and out["slow_s"] < 10

    async def in_loop() -> list:
        return await asyncio.gather(*[asyncio.to_thread(check_answer, p, g) for g, p, _ in cases])

    assert [c.correct for c in asyncio.run(in_loop())] == [c for *_, c in cases]


def test_a_pending_alarm_survives_a_check():
    """math-verify's signal.alarm(0) would cancel a timer someone else set; we re-arm it."""
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        assert check_answer("2\\sqrt{3}", "\\sqrt{12}").correct is True
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
        time.sleep(0.8)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
