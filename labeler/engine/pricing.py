"""Dollar prices per million tokens, so every row and run carries its cost.

The built-in table holds list prices (input, cached input, output; USD per 1M tokens) of the
models people judge with; prices change, so ``--prices FILE`` (JSON or YAML mapping a model name
to ``{input, cached_input, output}``) overrides or extends it. A dated model name
(``gpt-4o-mini-2024-07-18``) uses the longest table entry it starts with. A model with no price
gets cost None (unknown), never a made-up 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import UserError


@dataclass(frozen=True)
class Price:
    input: float
    cached_input: float
    output: float

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """``input_tokens`` counts all prompt tokens; ``cached_tokens`` of them bill at the cached rate."""
        fresh = max(0, input_tokens - cached_tokens)
        return (fresh * self.input + cached_tokens * self.cached_input + output_tokens * self.output) / 1e6


PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "o3": Price(2.00, 0.50, 8.00),
    "o3-mini": Price(1.10, 0.55, 4.40),
    "o4-mini": Price(1.10, 0.275, 4.40),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    # Anthropic (cached input = cache read; cache writes bill as input here)
    "claude-opus-4-1": Price(15.00, 1.50, 75.00),
    "claude-opus-4-5": Price(5.00, 0.50, 25.00),
    "claude-sonnet-4-5": Price(3.00, 0.30, 15.00),
    "claude-sonnet-4": Price(3.00, 0.30, 15.00),
    "claude-3-7-sonnet": Price(3.00, 0.30, 15.00),
    "claude-haiku-4-5": Price(1.00, 0.10, 5.00),
    "claude-3-5-haiku": Price(0.80, 0.08, 4.00),
    "claude-3-haiku": Price(0.25, 0.03, 1.25),
}


def load_prices(path: str | None = None) -> dict[str, Price]:
    """The built-in table, updated from ``path`` when given."""
    table = dict(PRICES)
    if path is None:
        return table
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--prices {path}: no such file")
    text = file.read_text("utf-8")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json or yaml syntax
        raise UserError(f"--prices {path}: cannot parse ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"--prices {path}: expected a mapping of model name to prices")
    for model, entry in data.items():
        try:
            table[str(model)] = Price(float(entry["input"]), float(entry.get("cached_input", entry["input"])),
                                      float(entry["output"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"--prices {path}: model '{model}' needs numbers 'input' and 'output' "
                            "(and optionally 'cached_input'), in USD per 1M tokens") from exc
    return table


def price_for(model: str | None, table: dict[str, Price]) -> Price | None:
    if not model:
        return None
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None
