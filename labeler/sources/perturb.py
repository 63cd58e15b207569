"""Make flawed variants of correct GSM8K-style solutions by corrupting one step's arithmetic.

For every correct solution (final answer equals the gold answer and every `<<expr=result>>`
calculator note checks out) each variant changes ONE note's result, and the visible number
printed right after it, to a plausible wrong value (off by a few, one digit changed, or a
factor of ten). The note's expression is left alone, so the step is a genuine arithmetic slip:
the free `gsm8k-calc` judge flags exactly that step, and `stepdpo pairs --strategy first-error`
gets a correct solution and a wrong one that share every step before it, with no API key.

The rules (propagation, ids, labels, seeding) are what `stepdpo perturb --help` documents
(stepdpo/commands/perturb.py); this module is the library the command calls.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from labeler.judges.calc import CalcError, safe_eval
from schemas.errors import UserError
from schemas.ids import response_id, sha256_hex


@dataclass
class PerturbConfig:
    variants: int = field(
        default=1, metadata={"help": "flawed variants to make per correct solution", "metavar": "N"}
    )
    seed: int = field(default=0, metadata={"help": "random seed; same seed, same variants"})
    propagate: bool = field(
        default=True,
        metadata={
            "help": "carry the wrong number into later steps (recomputing their notes), so the "
            "final answer goes wrong too; --no-propagate changes only the corrupted note"
        },
    )
    keep_original: bool = field(
        default=True,
        metadata={
            "help": "also write every input row unchanged, so first-error pairs have a correct "
            "solution to pair with"
        },
    )
    label_reference: bool = field(
        default=True,
        metadata={
            "help": "write known step labels into reference_scores: variants 1 before the "
            "corrupted step, 0 on it, null after; verified originals (with none) all 1"
        },
    )


# ---------------------------------------------------------------- numbers and a safe calculator

NOTE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# A number as GSM8K prints it: 130,000 / 3.5 / 12. No sign: a minus is part of the expression.
NUMBER = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
LEADING_NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")



def parse_number(text: str) -> float | None:
    """A number written with optional commas, $ and %, or None."""
    text = text.strip().replace(",", "").replace("$", "").rstrip("%").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def evaluate(expr: str) -> float | None:
    """A calculator note's value, by the same whitelisted evaluator the gsm8k-calc judge uses
    (so perturb and the judge never disagree on what a note computes); None if it can't be."""
    try:
        return safe_eval(expr)
    except CalcError:
        return None


def _decimals(text: str) -> int:
    text = text.strip()
    return len(text.split(".", 1)[1]) if "." in text else 0


def matches(value: float, written: str) -> bool:
    """Does a computed value agree with a result written with its own number of decimals?"""
    target = parse_number(written)
    if target is None:
        return False
    if math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-9):
        return True
    return round(value, _decimals(written)) == round(target, _decimals(written))


def format_like(value: float, like: str) -> str:
    """Write ``value`` in the style of ``like``: same decimals, commas if it had them."""
    like = like.strip()
    decimals = _decimals(like)
    if decimals == 0 and not float(value).is_integer():
        decimals = 2  # a carried division that no longer comes out whole
    text = f"{value:,.{decimals}f}" if "," in like else f"{value:.{decimals}f}"
    if decimals and "." not in like:
        text = text.rstrip("0").rstrip(".")
    return text


# ---------------------------------------------------------------- one step as text and notes


@dataclass
class _Note:
    expr: str
    result: str


def _split_step(step: str) -> tuple[list[str], list[_Note]]:
    """Step text → texts [t0, t1, ...] and notes [n1, ...] with step == t0 n1 t1 n2 t2 ..."""
    texts, notes, pos = [], [], 0
    for m in NOTE.finditer(step):
        texts.append(step[pos : m.start()])
        notes.append(_Note(m.group(1), m.group(2)))
        pos = m.end()
    texts.append(step[pos:])
    return texts, notes


def _join_step(texts: list[str], notes: list[_Note]) -> str:
    out = [texts[0]]
    for note, text in zip(notes, texts[1:], strict=True):
        out.append(f"<<{note.expr}={note.result}>>{text}")
    return "".join(out)


def _set_leading(text: str, old: str, new: str) -> str:
    """Replace the visible number right after a note when it is the note's old result."""
    m = LEADING_NUMBER.match(text)
    if m and parse_number(m.group(0)) == parse_number(old):
        return format_like(parse_number(new), m.group(0)) + text[m.end() :]
    return text


def _after_note(text: str, old: str, new: str, carry: dict[float, float]) -> str:
    """The text after a note: its visible result follows the note, the rest gets the carry."""
    m = LEADING_NUMBER.match(text)
    if m and parse_number(m.group(0)) == parse_number(old):
        return format_like(parse_number(new), m.group(0)) + _carry(text[m.end() :], carry)
    return _carry(text, carry)


def _carry(text: str, carry: dict[float, float]) -> str:
    """Replace every number whose value changed earlier by its new value, keeping its style."""
    if not carry:
        return text

    def sub(m: re.Match[str]) -> str:
        value = parse_number(m.group(0))
        return format_like(carry[value], m.group(0)) if value in carry else m.group(0)

    return NUMBER.sub(sub, text)


def check_solution(steps: list[str], final_answer: str | None, gold: str | None) -> str | None:
    """Why a solution is not a verified-correct one to perturb, or None if it is."""
    if gold is None or final_answer is None:
        return "no final or gold answer"
    fa, ga = parse_number(final_answer), parse_number(gold)
    if fa is None or ga is None or not math.isclose(fa, ga, rel_tol=1e-9, abs_tol=1e-9):
        return "final answer differs from gold"
    usable = 0
    for step in steps:
        for note in _split_step(step)[1]:
            value = evaluate(note.expr)
            if value is None or not matches(value, note.result):
                return "a calculator note does not check out"
            usable += 1
    if not usable:
        return "no calculator notes"
    return None


# ---------------------------------------------------------------- corruption


def _wrong_value(old: float, written: str, rng: random.Random) -> tuple[float, str]:
    """A plausible wrong value for ``old`` and the kind of slip it is."""
    decimals = _decimals(written)
    unit = 10.0**-decimals
    for _ in range(50):
        kind = rng.choice(["offset", "offset", "digit", "scale"])
        if kind == "offset":
            size = rng.choice([1, 1, 2, 3, 5, 10, max(1, round(abs(old) * 0.1))])
            new = old + rng.choice([-1, 1]) * size * (unit if decimals and rng.random() < 0.5 else 1)
        elif kind == "digit":
            digits = list(format_like(old, written.replace(",", "")).lstrip("-"))
            idx = [i for i, c in enumerate(digits) if c.isdigit()]
            i = rng.choice(idx)
            choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(idx) > 1)]
            digits[i] = rng.choice(choices)
            new = float("".join(digits)) * (-1 if old < 0 else 1)
        else:
            new = old * 10 if (rng.random() < 0.5 or old % 10) else old / 10
        new = round(new, decimals)
        if new != old and new != 0 and (new > 0 or old < 0):
            return new, kind
    return old + 1, "offset"


def perturb_once(
    steps: list[str],
    final_answer: str | None,
    rng: random.Random,
    propagate: bool,
    given: frozenset[float] = frozenset(),
) -> tuple[list[str], str | None, dict[str, Any]] | None:
    """Corrupt one randomly chosen note; None when that try gave no usable variant.

    ``given`` holds the numbers of the problem text: a value that is also one of the problem's
    own numbers is never carried, because a later "3" is then as likely the problem's 3 as the
    computed one.
    """
    parsed = [_split_step(s) for s in steps]
    sites = [
        (k, j)
        for k, (_, notes) in enumerate(parsed)
        for j, note in enumerate(notes)
        if parse_number(note.result) is not None and evaluate(note.expr) is not None
    ]
    if not sites:
        return None
    k, j = rng.choice(sites)
    texts, notes = parsed[k]
    old_text = notes[j].result
    old = parse_number(old_text)
    new, kind = _wrong_value(old, old_text, rng)
    new_text = format_like(new, old_text.strip())
    notes[j] = _Note(notes[j].expr, new_text)
    texts[j + 1] = _set_leading(texts[j + 1], old_text, new_text)

    carried_steps: list[int] = []
    carry: dict[float, float] = {old: new} if propagate and old not in given else {}
    if carry:
        # Everything after the corrupted note sees the wrong value.
        texts[j + 1] = _after_note(texts[j + 1], new_text, new_text, carry)
        for kk in range(k, len(parsed)):
            t, n = parsed[kk]
            before = _join_step(t, n)
            if kk != k:
                t[0] = _carry(t[0], carry)
            for jj in range(j + 1 if kk == k else 0, len(n)):
                expr, result = _carry(n[jj].expr, carry), n[jj].result
                if expr != n[jj].expr:
                    value = evaluate(expr)
                    old_r = parse_number(result)
                    if value is None or old_r is None:
                        return None  # e.g. the carried value made a division by zero
                    result = format_like(value, result.strip())
                    if parse_number(result) != old_r and old_r not in given:
                        carry[old_r] = parse_number(result)
                t[jj + 1] = _after_note(t[jj + 1], n[jj].result, result, carry)
                n[jj] = _Note(expr, result)
            if kk != k and _join_step(t, n) != before:
                carried_steps.append(kk)

    new_steps = [_join_step(t, n) for t, n in parsed]
    new_final = final_answer
    if new_steps[-1] != steps[-1] and final_answer is not None:
        changes = {old: new, **carry}
        value = parse_number(final_answer)
        if value in changes:
            new_final = format_like(changes[value], final_answer)
    info = {
        "carried": bool(carry),
        "step": k,
        "note": j,
        "expr": notes[j].expr,
        "original_result": old_text,
        "new_result": new_text,
        "kind": kind,
        "propagate": propagate,
        "carried_steps": carried_steps,
    }
    return new_steps, new_final, info


def _meta_dict(meta: str | None) -> dict[str, Any]:
    if not meta:
        return {}
    try:
        value = json.loads(meta)
    except json.JSONDecodeError:
        return {"original_meta": meta}
    return value if isinstance(value, dict) else {"original_meta": value}


def perturb_rows(rows: list[dict[str, Any]], cfg: PerturbConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Input `responses` rows → output rows (originals first if kept, then their variants)."""
    if cfg.variants < 0:
        raise UserError(f"--variants must be 0 or more, got {cfg.variants}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    stats = {"input_rows": len(rows), "perturbed_rows": 0, "variants": 0, "skipped": {}}
    for row in rows:
        steps = list(row["steps"])
        reason = check_solution(steps, row.get("final_answer"), row.get("gold_answer"))
        if cfg.keep_original and row["response_id"] not in seen:
            kept = dict(row)
            if reason is None and cfg.label_reference and row.get("reference_scores") is None:
                kept["reference_scores"] = [1.0] * len(steps)
            out.append(kept)
            seen.add(row["response_id"])
        if reason is not None:
            stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
            continue
        made = 0
        given = frozenset(parse_number(m.group(0)) for m in NUMBER.finditer(row["prompt"]))
        for attempt in range(max(10 * cfg.variants, 10)):
            if made >= cfg.variants:
                break
            rng = random.Random(int(sha256_hex([cfg.seed, row["response_id"], attempt])[:16], 16))
            result = perturb_once(steps, row.get("final_answer"), rng, cfg.propagate, given)
            if result is None:
                continue
            new_steps, new_final, info = result
            rid = response_id(row["prompt"], new_steps)
            if rid in seen or new_steps == steps:
                continue
            seen.add(rid)
            meta = _meta_dict(row.get("meta"))
            meta["perturbation"] = {"of": row["response_id"], "seed": cfg.seed, "attempt": attempt, **info}
            # The verified-correct original: what `--template with_reference` shows the judge.
            meta.setdefault("reference_solution", list(steps))
            k = info["step"]
            variant = dict(row)
            variant.update(
                response_id=rid,
                steps=new_steps,
                final_answer=new_final,
                meta=json.dumps(meta, ensure_ascii=False, sort_keys=True),
                reference_scores=(
                    [1.0] * k + [0.0] + [None] * (len(steps) - k - 1)
                    if cfg.label_reference
                    else row.get("reference_scores")
                ),
            )
            out.append(variant)
            made += 1
        stats["variants"] += made
        stats["perturbed_rows"] += bool(made)
    stats["output_rows"] = len(out)
    return out, stats
