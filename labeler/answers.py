"""Final answers: find the one a solution states, and decide whether it equals the gold one.

Used by the ``answer-match`` judge, ``stepdpo generate`` (each sample's ``final_answer``), the
eval command and the Monte-Carlo judge, so all of them agree on what "right" means.

Extraction (:func:`extract_answer`), last match wins, in this order: the last ``\\boxed{...}``
(or ``\\fbox{...}``) with nested braces balanced (``\\boxed{\\frac{1}{2}}``), GSM8K's
``#### 18``, then "The (final) answer is 18." (the math inside ``$...$`` if the answer is
written in it). A cut-off solution has none: ``None``, which counts as wrong.

Checking (:func:`check_answer`), in this order:

1. The GSM8K numeric rule, when both sides read as plain numbers: ``1,000`` = ``1000``, ``$18``,
   ``18 eggs``, ``25%`` = ``25`` (units, currency and percent marks are notation, as GSM8K's
   graders treat them), ``−5`` = ``-5``, ``\\frac{1}{2}`` = ``1/2`` = ``0.5``. Values are exact
   rationals (no float noise). A stated value also matches when it is the gold value rounded to
   the precision it shows with at least two decimals (``0.33`` for 1/3; never ``1001`` for
   ``1000``). ``rel_tol`` adds a relative tolerance for users who want one.
2. Otherwise Hugging Face's ``math-verify`` (symbolic LaTeX: ``\\sqrt{12}`` = ``2\\sqrt{3}``,
   sets, intervals, ``x = 3`` = ``3``).
3. If math-verify can read neither side, normalised string equality (``(A)`` = ``A``).

math-verify bounds each parse/compare with ``signal.alarm``, which only works on the main
thread. On the main thread we call it directly (and re-arm any timer that was pending, e.g.
pytest-timeout's); from any other thread the call goes to a one-process pool whose worker runs
it on *its* main thread, so the timeout holds everywhere, and a worker stuck past the deadline
is killed and replaced. Nothing here raises on a bad answer: every failure is a verdict with a
reason (``AnswerCheck.detail``).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import re
import signal
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from schemas.errors import UserError

#: Bump when a rule here changes which answers count as equal (part of judge fingerprints).
ANSWERS_VERSION = 1
DEFAULT_TIMEOUT_S = 5
MAX_ANSWER_CHARS = 1000  # longer "answers" are prose, not an answer: compared as strings

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?i)\banswer\s*(?:is|:)\s*:?\s*([^\n]*)")


@dataclass(frozen=True)
class AnswerCheck:
    """The outcome of comparing a stated answer with the gold one.

    ``correct`` is None only when there is no gold answer to compare with. ``method`` says which
    rule decided: numeric | math-verify | string | no-answer | no-gold.
    """

    correct: bool | None
    method: str
    detail: str = ""


# -- extraction ------------------------------------------------------------------------------

def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``text[start]``, and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None  # unbalanced: the solution was cut off inside the box


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    found = None
    for m in _BOX.finditer(text):
        if m.end() < len(text) and text[m.end()] == "{":
            got = _braced(text, m.end())
            if got is not None:
                found = got[0]
        else:  # \boxed 5
            word = re.match(r"[^\s$.,]+", text[m.end():])
            if word:
                found = word.group(0)
    return None if found is None else found.strip()


def _clean_tail(answer: str) -> str:
    """'$\\frac{1}{2}$ dollars.' -> '\\frac{1}{2}'; '18.' -> '18'; '**18**' -> '18'."""
    s = answer.strip().strip("*").strip()
    for open_, close in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_):
            end = s.find(close, len(open_))
            if end > 0:
                return s[len(open_):end].strip()
    s = re.sub(r"[.!。]+$", "", s).strip()
    return s.strip("*").strip()


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution states (see the module docstring), or None."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes and hashes[-1].strip():
        return _clean_tail(hashes[-1]) or None
    stated = _ANSWER_IS.findall(text)
    if stated and stated[-1].strip():
        return _clean_tail(stated[-1]) or None
    return None


# -- the GSM8K numeric rule -----------------------------------------------------------------

_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\?%|\\\$|\$|~|\\left|\\right|\^\s*\{?\\circ\}?|\\text\s*\{[^{}]*\}|"
                          r"\\mbox\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PLAIN = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_FRAC = re.compile(rf"([-+]?)\\[dt]?frac\s*\{{\s*({_NUM})\s*\}}\s*\{{\s*({_NUM})\s*\}}")
_SLASH = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_UNITS = re.compile(r"\s*[A-Za-z][A-Za-z .'/²³-]*$")


def numeric_value(text: str | None) -> Fraction | None:
    """The exact value of an answer that is a plain number, or None if it is anything else.

    Currency, thousands commas, percent and degree marks, ``\\text{}`` units and trailing unit
    words ('18 eggs', '3 cm') are notation; a leading 'x =' is dropped.
    """
    if text is None:
        return None
    s = str(text).strip().replace("−", "-").replace("–", "-")
    if not s or len(s) > 100:
        return None
    s = _LATEX_NOISE.sub("", s)
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())
    s = _THOUSANDS.sub("", s)
    s = _UNITS.sub("", s).strip()
    if s.startswith("-$") or s.startswith("+$"):
        s = s[0] + s[2:]
    exponent = re.search(r"[eE]([-+]?\d+)$", s)
    if exponent and abs(int(exponent.group(1))) > 308:  # beyond any float: not an answer
        return None
    try:
        if _PLAIN.fullmatch(s):
            return Fraction(s)
        m = _FRAC.fullmatch(s)
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return -value if m.group(1) == "-" else value
        m = _SLASH.fullmatch(s)
        if m:
            return Fraction(m.group(1)) / Fraction(m.group(2))
    except (ZeroDivisionError, ValueError, OverflowError):
        return None
    return None


def _shown_decimals(text: str) -> int:
    m = re.search(r"\.(\d+)", _THOUSANDS.sub("", text))
    return len(m.group(1)) if m else 0


def numbers_equal(pred: Fraction, gold: Fraction, pred_text: str = "", rel_tol: float = 0.0) -> bool:
    """Exact equality, a rounding of ``gold`` to the >= 2 decimals ``pred_text`` shows, or
    within ``rel_tol`` of ``gold``."""
    if pred == gold:
        return True
    decimals = _shown_decimals(pred_text)
    if decimals >= 2 and abs(pred - gold) <= Fraction(5, 10 ** (decimals + 1)):
        return True
    return rel_tol > 0 and abs(pred - gold) <= Fraction(rel_tol) * abs(gold)


# -- math-verify, safe on any thread --------------------------------------------------------

def math_verify_version() -> str:
    try:
        return importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _import_math_verify() -> Any:
    try:
        import math_verify
    except ImportError as exc:
        raise UserError("answer checking needs the math-verify package: "
                        "pip install 'math-verify>=0.9,<0.10' (a core dependency of stepwise-dpo)") from exc
    return math_verify


def _as_math(answer: str) -> str:
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def verify_here(gold: str, pred: str, timeout_s: int) -> tuple[bool | None, str]:
    """math-verify on this thread (which must be the main one): (equal, detail); None = neither
    side could be read."""
    mv = _import_math_verify()
    try:
        g = mv.parse(_as_math(gold), parsing_timeout=timeout_s)
        p = mv.parse(_as_math(pred), parsing_timeout=timeout_s)
        if not g or not p:
            return None, "math-verify could not read " + ("the gold answer" if not g else "the answer")
        return bool(mv.verify(g, p, timeout_seconds=timeout_s)), ""
    except Exception as exc:  # math-verify swallows most; a bad answer must never crash a run
        return None, f"math-verify failed: {type(exc).__name__}: {exc}"[:300]


def _verify_main_thread(gold: str, pred: str, timeout_s: int) -> tuple[bool | None, str]:
    # math-verify's signal.alarm would cancel a pending timer (pytest-timeout's, a user's);
    # remember it and re-arm what is left of it afterwards.
    pending, _interval = signal.getitimer(signal.ITIMER_REAL)
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    try:
        return verify_here(gold, pred, timeout_s)
    finally:
        if pending > 0:
            signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, max(pending - (time.monotonic() - start), 1e-3))


class _Worker:
    """One spawned process that runs math-verify on its own main thread, for other threads."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._lock = threading.Lock()

    def verify(self, gold: str, pred: str, timeout_s: int) -> tuple[bool | None, str]:
        import multiprocessing

        with self._lock:  # one call at a time: the worker is one process
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(processes=1)
            job = self._pool.apply_async(verify_here, (gold, pred, timeout_s))
            try:
                # Three bounded phases (two parses, one compare) plus a process start.
                return job.get(timeout=3 * timeout_s + 30)
            except multiprocessing.TimeoutError:
                self._pool.terminate()
                self._pool = None
                return None, f"math-verify did not finish in {3 * timeout_s + 30}s; worker restarted"
            except Exception as exc:
                self._pool.terminate()
                self._pool = None
                return None, f"math-verify worker failed: {type(exc).__name__}: {exc}"[:300]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None


_WORKER = _Worker()
atexit.register(_WORKER.close)


def symbolic_equal(gold: str, pred: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> tuple[bool | None, str]:
    """math-verify's verdict with a working timeout on any thread (see the module docstring)."""
    _import_math_verify()  # a missing package is one clear error, on the caller's thread
    if threading.current_thread() is threading.main_thread():
        return _verify_main_thread(gold, pred, timeout_s)
    return _WORKER.verify(gold, pred, timeout_s)


# -- the check ------------------------------------------------------------------------------

def _norm_text(s: str) -> str:
    s = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"[\s$]", "", s).strip(".").lower()
    return s[1:-1] if len(s) >= 2 and s[0] + s[-1] in ("()", "[]", "{}") and s.count(",") == 0 else s


def check_answer(pred: str | None, gold: str | None, *, rel_tol: float = 0.0,
                 timeout_s: int = DEFAULT_TIMEOUT_S) -> AnswerCheck:
    """Is the stated answer ``pred`` the gold answer? Never raises on a bad answer."""
    if gold is None or not str(gold).strip():
        return AnswerCheck(None, "no-gold", "no gold answer to compare with")
    if pred is None or not str(pred).strip():
        return AnswerCheck(False, "no-answer", "no final answer stated")
    pred, gold = str(pred).strip(), str(gold).strip()
    pv, gv = numeric_value(pred), numeric_value(gold)
    if pv is not None and gv is not None:
        ok = numbers_equal(pv, gv, pred, rel_tol)
        return AnswerCheck(ok, "numeric", f"{pred} {'==' if ok else '!='} {gold}")
    if len(pred) <= MAX_ANSWER_CHARS and len(gold) <= MAX_ANSWER_CHARS:
        ok, why = symbolic_equal(gold, pred, timeout_s)
        if ok is not None:
            return AnswerCheck(ok, "math-verify", f"{pred} {'==' if ok else '!='} {gold}")
    else:
        why = f"answer longer than {MAX_ANSWER_CHARS} characters"
    ok = _norm_text(pred) == _norm_text(gold)
    return AnswerCheck(ok, "string", (why + "; " if why else "") + f"{pred} {'==' if ok else '!='} {gold}")


def is_correct(text: str | None, gold: str | None, **kwargs: Any) -> bool:
    """Does the solution ``text`` state the gold answer? (False when it states none.)"""
    return check_answer(extract_answer(text), gold, **kwargs).correct is True


def answer_of_steps(steps: list[str] | tuple[str, ...], final_answer: str | None = None) -> str | None:
    """A response's answer: its ``final_answer`` column when set, else extracted from its text."""
    if final_answer is not None and str(final_answer).strip():
        return str(final_answer)
    return extract_answer("\n".join(steps))
