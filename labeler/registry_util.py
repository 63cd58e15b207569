"""The lazy ``"module:factory"`` lookup shared by the judge and generator registries.

Both registries name their backends as ``prefix -> ("module:function", what it is, extra)``
and import a module only when a backend of that prefix is built, so ``stepdpo --help`` and a
free judge never import torch or an SDK. This is that lookup, with its two one-line errors (an
unknown prefix; a missing optional package, naming the extra that installs it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from schemas.errors import UserError

#: prefix -> ("module:function", one-line description, the pip extra it needs or None)
Table = Mapping[str, tuple[str, str, "str | None"]]


def describe(table: Table) -> str:
    """``prefix: description; …`` for a ``--help`` text."""
    return "; ".join(f"{k}: {v[1]}" for k, v in table.items())


def resolve(table: Table, spec: str, kind: str) -> tuple[Callable[..., Any], str]:
    """The factory that ``spec`` (``prefix:rest``) names, imported now, and ``rest``."""
    prefix, _, rest = spec.partition(":")
    if prefix not in table:
        raise UserError(f"unknown {kind} '{spec}'; known: {', '.join(table)}")
    target, _, extra = table[prefix]
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'stepwise-dpo[{extra}]')" if extra else ""
        raise UserError(f"{kind} '{prefix}' needs a package that is not installed: {exc.name}{hint}") from exc
    return getattr(module, func), rest


def model_and_url(spec: str) -> tuple[str, str]:
    """``MODEL@BASE_URL`` (the ``openai-compatible:`` judges and generators) split at the ``@``
    that starts the URL, not the last one: a URL may carry ``user:password@``. ``("", "")``
    when there is no ``@http://`` / ``@https://`` in ``spec``."""
    for marker in ("@http://", "@https://"):
        model, sep, rest = spec.partition(marker)
        if sep and model:
            return model, marker[1:] + rest
    return "", ""
