"""Named step splitters: how a solution's text becomes the list of steps we score.

Steps are the unit of every later stage (judging, pairs, the trainer's step alignment), so a
splitter must be predictable. The contract every splitter keeps:

* ``split(text)`` returns steps with no surrounding whitespace, none of them empty. Line ends
  are normalised first (``\\r\\n`` and ``\\r`` become ``\\n``). A text that yields no step, or a
  piece that would be an empty step (``"Step 2:"`` with nothing after it, two regex separators
  in a row), raises :class:`SplitError`: an empty step is never silently kept or dropped.
* ``join(steps)`` puts the splitter's separator between the steps.
* Round trip: ``join(split(text)) == normalize(text)`` and ``split(join(steps)) == steps`` for
  any steps ``split`` can return. ``normalize`` is what the splitter considers insignificant:

  ``lines``         one step per non-blank line; blank lines and the whitespace around each
                    line are not kept (``"a\\n\\n  b "`` → ``["a", "b"]`` → ``"a\\nb"``).
  ``blank-lines``   one step per paragraph (separated by one or more blank lines); single line
                    breaks inside a step are kept; joined with ``"\\n\\n"``.
  ``step-markers``  a step starts at a line beginning with ``Step 3:`` / ``Step 3.`` (any
                    case) or ``3.`` / ``3)`` followed by a space; the marker stays in the step.
                    Text before the first marker is a step of its own. Joined with ``"\\n"``.
  ``regex:PATTERN`` steps are the pieces between matches of PATTERN (Python ``re``, e.g.
                    ``regex:\\n-{3,}\\n``); the matched separator text is dropped and the steps
                    are joined with ``"\\n"``. A zero-width pattern such as
                    ``regex:(?m)^(?=Claim)`` keeps its markers. ``split(join(steps)) == steps``
                    holds when PATTERN matches at the start of each joined piece or on ``"\\n"``.
  ``native``        the source already has steps (a JSON list): they are kept verbatim, but an
                    empty or whitespace-only step is still an error. Joined with ``"\\n"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SPLITTER_NAMES = ("lines", "blank-lines", "step-markers", "regex:PATTERN", "native")


class SplitError(ValueError):
    """The text cannot be split into valid steps; the message is one sentence (no location:
    the caller knows the file and line)."""


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise SplitError(f"expected the solution as a string, got {type(text).__name__}")
    text = _normalise_newlines(text)
    if not text.strip():
        raise SplitError("the solution is empty")
    return text


def _check_steps(steps: list[str]) -> list[str]:
    for k, step in enumerate(steps):
        if not step.strip():
            raise SplitError(f"step {k + 1} of {len(steps)} is empty")
    return steps


@dataclass(frozen=True)
class Splitter:
    """A named way to turn text into steps and back."""

    name: str
    sep: str
    _split: Callable[[str], list[str]]
    description: str

    def split(self, text: str | Sequence[str]) -> list[str]:
        """The steps of ``text``; raises SplitError on an empty solution or an empty step.

        ``native`` takes the source's list of steps instead and returns it checked, verbatim.
        """
        if self.name == "native" and not isinstance(text, str):
            return native_steps(text)
        steps = self._split(_check_text(text))
        if not steps:
            raise SplitError("the solution has no steps")
        return _check_steps(steps)

    def join(self, steps: Sequence[str]) -> str:
        return self.sep.join(steps)

    def normalize(self, text: str) -> str:
        """The form of ``text`` that survives a round trip through this splitter."""
        return self.join(self.split(text))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _blank_lines(text: str) -> list[str]:
    # Paragraphs of non-blank lines. Each line is stripped, so a line of only (any Unicode)
    # whitespace is blank and the rejoined text splits the same way again.
    steps: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            steps.append("\n".join(current))
            current = []
    if current:
        steps.append("\n".join(current))
    return steps


# "Step 3:" / "step 3." / "Step 3)" or "3." / "3)" at a line start; "1.5" and "Step 2.5" are
# not markers (a digit follows), and a bare "3." needs whitespace or the end after it. Any
# whitespace counts on both sides, so that stripping a step never turns a line into a marker.
_MARKER = re.compile(
    r"^[^\S\n]*(?:step[ \t]*\d+[ \t]*[:.)](?!\d)|\d+[.)](?=\s|$))", re.IGNORECASE | re.MULTILINE
)


def _step_markers(text: str) -> list[str]:
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise SplitError("no step markers found (a line starting with 'Step 1:' or '1.')")
    preamble = text[: marks[0].start()].strip()
    steps = [preamble] if preamble else []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    for m, end in zip(marks, ends, strict=True):
        if not text[m.end():end].strip():
            total = len(marks) + (1 if preamble else 0)
            raise SplitError(f"step {len(steps) + 1} of {total} is empty (only its marker '{m.group().strip()}')")
        steps.append(text[m.start():end].strip())
    return steps


def _regex(pattern: str) -> Callable[[str], list[str]]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise SplitError(f"bad splitter pattern {pattern!r}: {exc}") from exc

    def split(text: str) -> list[str]:
        pieces = compiled.split(text.strip())
        if compiled.groups:
            # Captured separator text is dropped, like the rest of the separator.
            pieces = pieces[:: compiled.groups + 1]
        pieces = [p.strip() for p in pieces]
        # A separator at the very start or end frames the text (and a zero-width match at
        # position 0 yields an empty first piece); only an empty piece between two separators
        # is an empty step.
        while len(pieces) > 1 and not pieces[0]:
            pieces.pop(0)
        while len(pieces) > 1 and not pieces[-1]:
            pieces.pop()
        return pieces

    return split


def _native(text: str) -> list[str]:
    raise SplitError("the 'native' splitter takes a list of steps, not text; pick a text splitter")


_FIXED: dict[str, Splitter] = {
    "lines": Splitter("lines", "\n", _lines, "one step per non-blank line"),
    "blank-lines": Splitter("blank-lines", "\n\n", _blank_lines, "one step per paragraph"),
    "step-markers": Splitter(
        "step-markers", "\n", _step_markers, "a step starts at 'Step N:' or 'N.' at a line start"
    ),
    "native": Splitter("native", "\n", _native, "the source already has a list of steps"),
}


def get_splitter(name: str) -> Splitter:
    """The splitter called ``name`` (``lines``, ``blank-lines``, ``step-markers``,
    ``regex:PATTERN`` or ``native``); raises SplitError for an unknown name or a bad pattern."""
    if name in _FIXED:
        return _FIXED[name]
    if name.startswith("regex:"):
        pattern = name[len("regex:"):]
        if not pattern:
            raise SplitError("the regex splitter needs a pattern: regex:PATTERN")
        return Splitter(name, "\n", _regex(pattern), f"pieces between matches of {pattern!r}")
    raise SplitError(f"unknown splitter '{name}'; choose one of {', '.join(SPLITTER_NAMES)}")


def native_steps(value: object) -> list[str]:
    """Check a source's own list of steps and return it verbatim (no re-splitting)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SplitError(f"expected a list of step strings, got {type(value).__name__}")
    if not value:
        raise SplitError("the solution has no steps")
    for k, step in enumerate(value):
        if not isinstance(step, str):
            raise SplitError(f"step {k + 1} of {len(value)} is {type(step).__name__}, not a string")
    return _check_steps(list(value))
