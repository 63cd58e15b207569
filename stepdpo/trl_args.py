"""TRL-native flags for the training commands: TRL's `TrlParser` over (script args, a TRL
config, TRL's `ModelConfig`), fitted into the dispatcher's one-parser-per-command shape.

A TRL user's flags work as in `trl dpo`: `--model_name_or_path`, `--use_peft --lora_r
--lora_target_modules`, `--dtype` (or `--torch_dtype`), `--attn_implementation`, and
`--config FILE.yaml` whose values sit under the flags given on the command line (its ``env:``
mapping sets environment variables, as TrlParser does). Every field also answers to its
dashed spelling (`--max-length` for `--max_length`).

Used by `train` and by any command that trains with a TRL trainer:

    def configure(parser):
        add_trl_arguments(parser, (MyScriptArguments, MyConfig, ModelConfig))

    def run(args):
        script, config, model_args = parse_trl_arguments(args, (MyScriptArguments, MyConfig, ModelConfig)).values

`configure` adds the options with no default in the namespace, so `run` knows which flags were
given (a flag given with its default value still wins over the YAML file).
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import UserError

# Extra spellings of TRL's own fields: short ones kept from earlier `stepdpo train` releases,
# and `--torch_dtype`, transformers' name for `--dtype` before 4.56.
ALIASES: dict[str, tuple[str, ...]] = {
    "model_name_or_path": ("--model",),
    "dtype": ("--torch_dtype", "--torch-dtype"),
    "lora_target_modules": ("--lora_targets",),
}


def _parser_class():
    from trl import TrlParser

    class Parser(TrlParser):
        """TrlParser whose errors are one-line `UserError`s instead of usage + exit."""

        def error(self, message: str):  # noqa: D401 - argparse's hook
            raise UserError(message)

    return Parser


def trl_parser(dataclass_types: Sequence[type]) -> Any:
    """A `TrlParser` over ``dataclass_types`` (errors raise `UserError`)."""
    return _parser_class()(list(dataclass_types), add_help=False)


def add_trl_arguments(parser: argparse.ArgumentParser, dataclass_types: Sequence[type],
                      titles: Sequence[str] | None = None) -> None:
    """Add every field of ``dataclass_types`` to ``parser`` as TrlParser defines it, one argument
    group per dataclass (titled by ``titles``), plus `--config FILE.yaml`.

    Defaults are left out of the namespace (``SUPPRESS``): `parse_trl_arguments` puts TRL's
    defaults, the YAML file and the given flags together, in that order.
    """
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of field: value for any option below (and `env:` variables); "
                             "flags given on the command line win over it")
    for index, dtype in enumerate(dataclass_types):
        title = titles[index] if titles else dtype.__name__
        group = parser.add_argument_group(title)
        # A subclass's own fields first (the stepwise ones before TrainingArguments' hundred).
        own = set(getattr(dtype, "__annotations__", {}))
        actions = [a for a in trl_parser([dtype])._actions if a.dest != "help"]
        actions.sort(key=lambda a: a.dest not in own)
        for action in actions:
            action = copy.copy(action)
            action.option_strings = list(action.option_strings)
            if not action.option_strings[0].startswith("--no"):
                action.option_strings += [a for a in ALIASES.get(action.dest, ()) if a not in action.option_strings]
            action.default = argparse.SUPPRESS
            action.required = False  # may come from --config; checked when the dataclasses are built
            group._add_action(action)


@dataclass
class TrlArguments:
    """The dataclasses built from one command line, and the fields set by a flag or the YAML."""

    values: tuple[Any, ...]
    explicit: set[str] = field(default_factory=set)
    config_file: str | None = None


def read_yaml_config(path: str) -> dict[str, Any]:
    """The YAML mapping of ``path`` (one-line errors), with its ``env:`` applied to os.environ."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the YAML config ({exc})".splitlines()[0]) from exc
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: the YAML config must be a mapping of field: value")
    env = loaded.pop("env", {})
    if not isinstance(env, dict):
        raise UserError(f"{path}: `env` must be a mapping of VARIABLE: value")
    for key, value in env.items():
        os.environ[str(key)] = str(value)
    return loaded


def parse_trl_arguments(args: argparse.Namespace, dataclass_types: Sequence[type],
                        defaults: dict[str, Any] | None = None, ignore: Sequence[str] = ()) -> TrlArguments:
    """TRL defaults < ``defaults`` (the command's own) < the `--config` YAML file < flags given,
    built into ``dataclass_types``. YAML keys in ``ignore`` are skipped (e.g. the record of where
    a model came from, which a saved config carries and a rerun must not set).

    Uses TrlParser's own merge (`set_defaults_with_config`), so YAML strings are typed exactly as
    the same text on the command line would be; a `__post_init__` ValueError is a `UserError`.
    """
    parser = trl_parser(dataclass_types)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    given = {name: getattr(args, name) for name in dests if hasattr(args, name)}
    config_file = getattr(args, "config", None)
    loaded = read_yaml_config(config_file) if config_file else {}
    for key in ignore:
        loaded.pop(key, None)
    unknown = sorted(set(loaded) - dests)
    if unknown:
        raise UserError(f"{config_file}: unknown field(s) {', '.join(unknown)}")
    parser.set_defaults_with_config(**{**(defaults or {}), **loaded, **given})
    try:
        values = parser.parse_args_into_dataclasses(args=[])
    except UserError as exc:
        raise UserError(f"{config_file}: {exc}" if config_file else str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from exc
    return TrlArguments(tuple(values), set(loaded) | set(given), config_file)
