"""Files that ship with stepwise-dpo (GSM8K samples, their licence), found in a checkout or in
an installed wheel alike.

In the repository they live in the top-level `data/` folder; a wheel carries them as package
data under `stepdpo/_data/` (see pyproject.toml), so `stepdpo demo` and `stepdpo eval` work
from any folder after `pip install stepwise-dpo`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from schemas.errors import UserError

CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"


def bundled_file(relative: str) -> Path:
    """The path of a bundled file, e.g. ``bundled_file("gsm8k/test.jsonl")``."""
    packaged = resources.files("stepdpo") / "_data" / relative
    if packaged.is_file():
        return Path(str(packaged))
    local = CHECKOUT_DATA / relative
    if local.is_file():
        return local
    raise UserError(f"bundled file {relative} is missing from this installation (reinstall stepwise-dpo)")
