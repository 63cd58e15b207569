"""`gsm8k-calc`: a free, rule-based step judge.

GSM8K solutions carry calculator notes (``<<48/2=24>>``); a flawed step usually shows up as a
note whose arithmetic is wrong, or as a final answer that differs from the gold one. Checking
those costs nothing and needs no model, so it is the judge of the demo and a cheap sanity
baseline for the paid ones. Steps written without notes (model generations) are checked through
the simple ``a op b = c`` equations we can parse in their text.

Scores: 0 if any check in the step fails, 1 if at least one check passed and none failed, and
None where nothing could be checked (we never guess). ``raw`` holds a JSON list explaining each
step's verdict, so a surprising score can be audited.

Arithmetic is evaluated by walking a whitelisted ``ast`` (numbers, + - * / // % **, unary
signs, parentheses) with bounded exponents and magnitudes: never ``eval``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from labeler.judges.base import Item, Judge, Verdict

#: Bump when a rule changes what this judge outputs (it is part of the fingerprint).
CALC_VERSION = 2

MAX_EXPR_CHARS = 200
MAX_NODES = 64
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15
REL_TOL = 1e-9  # float noise only: 3,500,003 is not 3,500,000

_NOTE = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# '20%' is a percent; '7%3' is Python's modulo and left alone.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*%(?!\s*[\d.(])")
# A word not followed by '(' is a unit ("2 hours"); 'abs(' stays, and the walker refuses it.
_UNIT_WORD = re.compile(r"[A-Za-z_]+(?![A-Za-z_]|\s*\()")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_OP = r"(?:[-+*/x×÷–−]|//)"
# A text equation: numbers joined by operators (at least one), '=', a number (maybe a percent).
# The left side may carry '$' and '%' marks and parentheses; letters end it, so "x = 5" and
# "12 slices * 1/3 = 4" (whose left operand is cut by a unit) are not taken as equations.
_TEXT_EQ = re.compile(
    rf"(?<![\w.,])"
    rf"(\(*\s*\$?\s*(?:{_NUM})\s*%?\)*(?:\s*{_OP}\s*\(*\s*\$?\s*(?:{_NUM})\s*%?\)*)+)"
    rf"\s*=\s*\$?\s*(-?(?:{_NUM})(?:\s*%)?)(?!\d|\s\d{3}\b|[A-Za-z](?![A-Za-z]))(\s*cents?\b)?"
    # Not followed by more arithmetic ("= 9 + 3 = 12" running sums, "= 3/4" fractions).
    rf"(?![\d.]*\s*{_OP}\s*[\d.$(])(?![\d,]*\.\d)"
)
# Text just before an equation that means its left side is cut off ("* 1/3", "1 1/2", "= 3/4").
_CUT_BEFORE = re.compile(r"(?:[-+*/x×÷–−=()^%,]|\d)\s*$")
_FINAL_PATTERNS = (
    re.compile(r"####\s*(.+?)\s*$", re.S),
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.I),
)

_BINOPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Any] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """The expression is outside what we evaluate (not an arithmetic mistake)."""


def _normalise(expr: str) -> str:
    """Turn note/text arithmetic into Python syntax: thousands commas, '$', units, 'x' times."""
    s = expr.strip()
    s = _THOUSANDS.sub("", s)
    s = s.replace("$", "").replace("×", "*").replace("÷", "/").replace("^", "**")
    s = s.replace("–", "-").replace("−", "-")
    s = _PERCENT.sub(r"(\1/100)", s)
    # 'x' between operands means times ("3 x 4"); other letters are units ("2 hours").
    s = re.sub(r"(?<=[\d)\s])x(?=[\s\d(.])", "*", s)
    s = _UNIT_WORD.sub(" ", s)
    return s.strip()


def safe_eval(expr: str) -> float:
    """Value of an arithmetic expression, or CalcError when it is not one we accept."""
    s = _normalise(expr)
    if not s or len(s) > MAX_EXPR_CHARS:
        raise CalcError(f"cannot evaluate {expr!r}")
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"cannot parse {expr!r}") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"expression too long: {expr!r}")
    return float(_eval_node(tree.body, expr))


def _eval_node(node: ast.AST, expr: str) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_eval_node(node.operand, expr))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _eval_node(node.left, expr)
        right = _eval_node(node.right, expr)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_MAGNITUDE):
            raise CalcError(f"power out of bounds in {expr!r}")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError) as exc:
            raise CalcError(f"{type(exc).__name__} in {expr!r}") from exc
        if isinstance(value, complex):
            raise CalcError(f"complex result in {expr!r}")
    else:
        raise CalcError(f"unsupported syntax in {expr!r}")
    if abs(value) > MAX_MAGNITUDE or (isinstance(value, float) and not math.isfinite(value)):
        raise CalcError(f"value out of bounds in {expr!r}")
    return value


def parse_number(text: str | None) -> float | None:
    """The number a claimed result or answer states ('$1,200', '45%', '3.50 dollars'), or None."""
    if text is None:
        return None
    s = _THOUSANDS.sub("", str(text)).replace("$", "").strip().rstrip(".")
    m = _NUMBER.fullmatch(s.rstrip("%").strip()) or _NUMBER.fullmatch(re.sub(r"\s*[A-Za-z]+\.?$", "", s))
    if m is None:
        try:
            return float(s) if s else None
        except ValueError:
            return None
    return float(m.group(0))


def _decimals(text: str) -> int:
    s = _THOUSANDS.sub("", text).strip()
    return len(s.split(".", 1)[1].rstrip("%").strip()) if "." in s else 0


def result_matches(value: float, claimed_text: str) -> bool:
    """Is ``claimed_text`` a faithful statement of ``value``?

    Exact up to float noise; when the exact value has more decimals than the claim shows, any
    rounding of it to the shown precision (down or up: 33.3 people become 33 or 34) passes.
    """
    claimed = parse_number(claimed_text)
    if claimed is None:
        raise CalcError(f"result {claimed_text!r} is not a number")
    tol = REL_TOL * max(1.0, abs(value))
    if abs(value - claimed) <= tol:
        return True
    unit = 10.0 ** -_decimals(claimed_text)
    exact_at_shown = abs(value / unit - round(value / unit)) * unit <= tol
    return not exact_at_shown and abs(value - claimed) < unit


def _answer_value(text: str) -> float | None:
    """A stated answer as a number: '1,200', '$18.00', '45%', or a fraction like '3/4'."""
    value = parse_number(text)
    if value is None and re.fullmatch(r"\s*-?\d+\s*/\s*\d+\s*", text or ""):
        try:
            value = safe_eval(text)
        except CalcError:
            return None
    return value


def answers_equal(answer: str, gold: str) -> bool:
    a, g = _answer_value(answer), _answer_value(gold)
    if a is not None and g is not None:
        return abs(a - g) <= REL_TOL * max(1.0, abs(g))
    norm = lambda s: re.sub(r"\s+", " ", s.replace("$", "")).strip().rstrip(".").lower()  # noqa: E731
    return norm(answer) == norm(gold)


def extract_final_answer(step: str) -> str | None:
    """The final answer a last step states ('#### 18', '\\boxed{18}', 'the answer is 18')."""
    for pattern in _FINAL_PATTERNS:
        m = pattern.search(step)
        if m:
            return m.group(1).strip()
    return None


@dataclass
class StepCheck:
    """The checks of one step and their outcome, as written into ``raw``."""

    step: int
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        if self.failed:
            return 0.0
        return 1.0 if self.passed else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "score": self.score}
        for key in ("failed", "passed", "skipped"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.score is None:
            out["why"] = "nothing checkable in this step"
        return out


def _claims(value: float, rhs: str, cents: bool) -> bool:
    rhs = rhs.strip()
    if cents:  # "$2.50 - $2.24 = 26 cents" and "4*5 = 20 cents"
        return result_matches(value * 100, rhs) or result_matches(value, rhs)
    if rhs.endswith("%"):
        # "100% - 80% = 20%" (value 0.2) and "(3600/6000)*100 = 60%" (value 60) both say it.
        return result_matches(value * 100, rhs[:-1]) or result_matches(value, rhs[:-1])
    return result_matches(value, rhs)


def _check_equation(check: StepCheck, kind: str, lhs: str, rhs: str, cents: bool = False) -> None:
    label = f"{kind} {lhs.strip()}={rhs.strip()}" + (" cents" if cents else "")
    # Prose uses '%' both as /100 and as a plain count ("$7500/75% = $100" per point): either
    # reading that makes the claim true is accepted.
    readings = [lhs] + ([lhs.replace("%", "")] if "%" in lhs else [])
    value = None
    try:
        for reading in readings:
            value = safe_eval(reading)
            if _claims(value, rhs, cents):
                check.passed.append(label)
                return
    except CalcError as exc:
        check.skipped.append(f"{label}: {exc}")
        return
    check.failed.append(f"{label}: evaluates to {value:g}")


def text_equations(text: str) -> list[tuple[str, str, bool]]:
    """The ``a op b = c`` equations of a step's visible text whose left side is complete."""
    found = []
    for m in _TEXT_EQ.finditer(text):
        if _CUT_BEFORE.search(text[: m.start()]):
            continue
        found.append((m.group(1), m.group(2), bool(m.group(3))))
    return found


def check_step(index: int, text: str, use_notes: bool) -> StepCheck:
    """Check a step's calculator notes, or, in a solution without notes, its plain equations.

    Where notes exist they are the authority: the prose around them is often loose (running
    sums, units inside the arithmetic, a typo in a restated number) while the note is what was
    computed.
    """
    check = StepCheck(step=index)
    if use_notes:
        for m in _NOTE.finditer(text):
            _check_equation(check, "note", m.group(1), m.group(2))
    else:
        for lhs, rhs, cents in text_equations(text):
            _check_equation(check, "text", lhs, rhs, cents)
    return check


def check_response(item: Item) -> tuple[list[float | None], list[dict[str, Any]]]:
    """Per-step scores and per-step explanations of one response."""
    use_notes = any(_NOTE.search(step) for step in item.steps)
    checks = [check_step(k, step, use_notes) for k, step in enumerate(item.steps)]
    if checks:
        last = checks[-1]
        answer = item.final_answer or extract_final_answer(item.steps[-1])
        if item.gold_answer is None or item.gold_answer == "":
            last.skipped.append("final answer: no gold answer")
        elif answer is None:
            last.skipped.append("final answer: none stated")
        elif answers_equal(answer, item.gold_answer):
            last.passed.append(f"final answer {answer} == gold {item.gold_answer}")
        else:
            last.failed.append(f"final answer {answer} != gold {item.gold_answer}")
    return [c.score for c in checks], [c.to_json() for c in checks]


class CalcJudge(Judge):
    """Rule-based; runs inline (microseconds per response), so batches are large."""

    name = "gsm8k-calc"
    batch_size = 256
    price_model = None

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"version": CALC_VERSION}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        return {"gold_answer": item.gold_answer, "final_answer": item.final_answer}

    async def judge(self, items: list[Item]) -> list[Verdict]:
        out = []
        for item in items:
            scores, explained = check_response(item)
            out.append(Verdict(scores=scores, raw=json.dumps(explained, ensure_ascii=False)))
        return out

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        return 0, 0


def make_calc(model: str, config: Any) -> CalcJudge:
    """Registry factory; ``gsm8k-calc`` takes no model and no options."""
    return CalcJudge()
