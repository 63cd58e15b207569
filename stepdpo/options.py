"""Config dataclasses → argparse options, so every option is documented in one place.

A field's ``metadata`` carries ``help`` (required), and optionally ``choices``, ``flag`` (a
different option name) and ``metavar``. Booleans become ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` → int; ``list[str]`` → list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, title: str | None = None
) -> None:
    """Add one option per field of ``cls`` (which must use ``from __future__`` free annotations
    or resolvable ones)."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(title) if title and hasattr(parser, "add_argument_group") else parser
    for field in dataclasses.fields(cls):
        if field.metadata.get("skip_cli"):
            continue
        tp = _base_type(hints[field.name])
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else field.default_factory()  # type: ignore[misc]
            if field.default_factory is not dataclasses.MISSING
            else None
        )
        help_text = field.metadata.get("help", "")
        # Identity, not ==: 0 and 0.0 equal False, and a default of 0 (greedy --temperature, --seed)
        # is worth showing.
        unset = default is None or default is False or (isinstance(default, (str, list)) and not default)
        if not unset and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text}
        if "metavar" in field.metadata:
            kwargs["metavar"] = field.metadata["metavar"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list or tp is list:
            inner = typing.get_args(tp)
            kwargs["type"] = inner[0] if inner else str
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = tp
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        target.add_argument(_flag(field), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed args (fields absent from ``args`` keep their defaults)."""
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return cls(**values)


def accept_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Let every long option answer to its other spelling too: ``--max-length`` and
    ``--max_length`` (our commands use dashes, TRL's use underscores; users mix them).

    argparse has no public way to list a parser's options, so this walks its actions once,
    after the command's ``configure``; a spelling already taken is left alone.
    """
    taken = {s for action in parser._actions for s in action.option_strings}
    for action in parser._actions:
        for name in list(action.option_strings):
            if not name.startswith("--") or len(name) < 4:
                continue
            if isinstance(action, argparse.BooleanOptionalAction) and name.startswith("--no-"):
                continue  # it tells --no-x from --x by that exact prefix
            body = name[2:]
            other = "--" + (body.replace("-", "_") if "-" in body else body.replace("_", "-"))
            if other != name and other not in taken:
                action.option_strings.append(other)
                parser._option_string_actions[other] = action
                taken.add(other)


def stop_after_failures_help(kept: str) -> str:
    """The ``--stop-after-failures`` help of label and generate (one dead-server check,
    labeler.engine.stopping.DownProbe, in both), naming what a stopped run keeps."""
    return (f"dead-server check: stop the run, keeping {kept}, when its first N requests all fail the way a "
            "down server fails (connection refused or reset, --timeout passed, HTTP 5xx), or when, after "
            "answers, N requests sent after the server's first such failure fail that way with no answer in "
            "between for longer than one request's retry waits (--backoff doubled per try up to --max-backoff, "
            "over --max-attempts: 31 s at the defaults; a 429 is an answer); exit 2, rerun the same command to "
            "do the rest; 0: never")


def add_allow_incomplete(parser: argparse.ArgumentParser) -> None:
    """The one flag with which a reader accepts a run folder whose last run did not finish."""
    from schemas.folders import ALLOW_INCOMPLETE

    parser.add_argument(ALLOW_INCOMPLETE, action="store_true", dest="allow_incomplete",
                        help="read a `generate`/`label` run folder whose last run did not finish (killed, "
                        "interrupted, stopped by a budget): use the rows it has, with a warning. Without it "
                        "such a folder is refused, naming the command that finishes it")


def require_finished_inputs(paths: Any, args: argparse.Namespace) -> None:
    """:func:`schemas.folders.require_finished_run` on every input path (``None`` skipped)."""
    from schemas.folders import require_finished_run

    for path in [paths] if isinstance(paths, str | os.PathLike) else paths:
        if path is not None:
            require_finished_run(path, getattr(args, "allow_incomplete", False))
