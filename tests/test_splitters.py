"""Every splitter's round trip: join(split(t)) == normalize(t) and split(join(steps)) == steps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeler.sources.splitters import SPLITTER_NAMES, SplitError, get_splitter, native_steps

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with the characters that matter: line breaks of every kind, spaces, tabs, Unicode
# whitespace, digits, markers' letters and punctuation.
ALPHABET = st.sampled_from(list("ab1 2.:)\t\n\r\n-Sstep\u00a0\u2028\x85é"))
TOKENS = st.sampled_from(
    ["Step 1:", "step 2.", "3)", "4.", "1.5", "\n", "\n\n", " \n", "\r\n", "\t", " ", "x", "é",
     "---", "\n---\n", ";", "Claim", "\u2028", "\x85", "\u00a0"]
)
texts = st.one_of(st.lists(ALPHABET, max_size=80), st.lists(TOKENS, max_size=30)).map("".join)

# Splitters whose join separator is itself a separator: steps → text → the same steps.
TEXT_SPLITTERS = ["lines", "blank-lines", "step-markers", "regex:\\n+", "regex:(?m)^(?=Claim)", "regex:\\s*\\n\\s*"]
# regex splitters whose pattern does not match the "\n" they join with: the steps are still
# clean and contain no separator, and join(split(t)) is the documented normal form.
OTHER_REGEX = ["regex:\\n-{3,}\\n", "regex:;", "regex:\\s*(;)\\s*"]


@pytest.mark.parametrize("name", TEXT_SPLITTERS)
@FAST
@given(text=texts)
def test_round_trip_on_any_text(name, text):
    sp = get_splitter(name)
    try:
        steps = sp.split(text)
    except SplitError:
        return  # empty solution / empty step / no markers: refused, never silently kept
    assert steps and all(s.strip() and s == s.strip() for s in steps)
    joined = sp.join(steps)
    assert joined == sp.normalize(text)
    assert sp.split(joined) == steps  # steps → text → the same steps
    assert sp.normalize(joined) == joined  # normal form is a fixed point


@pytest.mark.parametrize("name", OTHER_REGEX)
@FAST
@given(text=texts)
def test_regex_steps_hold_no_separator(name, text):
    import re

    sp = get_splitter(name)
    try:
        steps = sp.split(text)
    except SplitError:
        return
    pattern = re.compile(name[len("regex:"):])
    assert steps and all(s.strip() and s == s.strip() and not pattern.search(s) for s in steps)
    assert sp.join(steps) == "\n".join(steps) == sp.normalize(text)


step_text = st.lists(st.sampled_from(list("ab1 2=+x.é")), min_size=1, max_size=20).map("".join).map(str.strip).filter(bool)


@FAST
@given(steps=st.lists(step_text, min_size=1, max_size=8))
def test_lines_and_blank_lines_rebuild_steps(steps):
    for name in ("lines", "blank-lines"):
        sp = get_splitter(name)
        assert sp.split(sp.join(steps)) == steps


@FAST
@given(bodies=st.lists(step_text, min_size=1, max_size=8))
def test_step_markers_rebuild_steps(bodies):
    steps = [f"Step {k + 1}: {b}" for k, b in enumerate(bodies)]
    sp = get_splitter("step-markers")
    assert sp.split(sp.join(steps)) == steps


def test_exact_round_trip_examples():
    gsm = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18."
    assert get_splitter("lines").join(get_splitter("lines").split(gsm)) == gsm
    para = "First paragraph\nstill first.\n\nSecond."
    assert get_splitter("blank-lines").split(para) == ["First paragraph\nstill first.", "Second."]
    assert get_splitter("blank-lines").normalize(para) == para
    marked = "Let me think.\nStep 1: add.\nStep 2. multiply\nacross lines\n3) done"
    assert get_splitter("step-markers").split(marked) == [
        "Let me think.", "Step 1: add.", "Step 2. multiply\nacross lines", "3) done"
    ]
    assert get_splitter("step-markers").normalize(marked) == marked


def test_normalisation_is_documented_behaviour():
    assert get_splitter("lines").split("  a \r\n\r\n\tb\n\n") == ["a", "b"]
    assert get_splitter("lines").normalize("  a \r\n\r\n\tb\n\n") == "a\nb"
    assert get_splitter("blank-lines").split("a\n \n\n b \n c") == ["a", "b\nc"]
    assert get_splitter("step-markers").split("1. x\n1.5 is not a marker\n2) y") == [
        "1. x\n1.5 is not a marker", "2) y"
    ]
    assert get_splitter("step-markers").split("STEP 1: x\nstep2: y") == ["STEP 1: x", "step2: y"]
    # regex: separators dropped (captured groups too), steps joined by "\n".
    sp = get_splitter("regex:\\s*(;)\\s*")
    assert sp.split("a ; b;c") == ["a", "b", "c"] and sp.join(["a", "b"]) == "a\nb"
    # A zero-width pattern keeps its markers; framing separators are not steps.
    assert get_splitter("regex:(?m)^(?=Claim)").split("Claim 1\nClaim 2") == ["Claim 1", "Claim 2"]
    assert get_splitter("regex:;").split(";a;b;") == ["a", "b"]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("lines", " \n\t\n", "the solution is empty"),
        ("blank-lines", "", "the solution is empty"),
        ("step-markers", "just prose", "no step markers found (a line starting with 'Step 1:' or '1.')"),
        ("step-markers", "Step 1: ok\nStep 2:\nStep 3: ok", "step 2 of 3 is empty (only its marker 'Step 2:')"),
        ("regex:;", "a;;b", "step 2 of 3 is empty"),
        ("regex:;", "a; ;b", "step 2 of 3 is empty"),
        ("native", "a\nb", "the 'native' splitter takes a list of steps, not text; pick a text splitter"),
    ],
)
def test_empty_steps_are_errors(name, text, message):
    with pytest.raises(SplitError) as exc:
        get_splitter(name).split(text)
    assert str(exc.value) == message


def test_native_keeps_steps_verbatim_but_refuses_empty_ones():
    sp = get_splitter("native")
    steps = ["  indented step", "x = 1 \n y = 2"]
    assert sp.split(steps) == steps
    assert sp.split(sp.split(steps)) == steps
    assert sp.join(steps) == "  indented step\nx = 1 \n y = 2"
    with pytest.raises(SplitError, match=r"^step 2 of 3 is empty$"):
        native_steps(["a", "", "c"])
    with pytest.raises(SplitError, match=r"^the solution has no steps$"):
        native_steps([])
    with pytest.raises(SplitError, match=r"^expected a list of step strings, got str$"):
        native_steps("a")
    with pytest.raises(SplitError, match=r"^step 1 of 1 is NoneType, not a string$"):
        native_steps([None])


def test_splitter_names():
    for name in SPLITTER_NAMES:
        get_splitter(name.replace("PATTERN", "x"))
    with pytest.raises(SplitError, match="unknown splitter 'words'"):
        get_splitter("words")
    with pytest.raises(SplitError, match=r"^the regex splitter needs a pattern: regex:PATTERN$"):
        get_splitter("regex:")
    with pytest.raises(SplitError, match=r"^bad splitter pattern '\[': "):
        get_splitter("regex:[")
    with pytest.raises(SplitError, match="expected the solution as a string, got int"):
        get_splitter("lines").split(5)
