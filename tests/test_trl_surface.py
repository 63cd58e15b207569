"""The TRL surface StepwiseDPOTrainer relies on, pinned: a TRL bump fails here, readably."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

trl = pytest.importorskip("trl")

from trl import DPOTrainer  # noqa: E402

from trainer import trl_compat  # noqa: E402
from trainer.config import StepwiseDPOConfig  # noqa: E402
from trainer.stepwise_trainer import StepwiseDPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _params(fn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def test_trl_version_is_the_one_the_overrides_were_written_for():
    assert trl.__version__ == trl_compat.TRL_VERSION, (
        f"TRL {trl.__version__} is installed, trainer/trl_compat.py was checked against "
        f"{trl_compat.TRL_VERSION}: re-check PRIVATE_HOOKS, PRIVATE_ATTRIBUTES and HELPERS, then bump it")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"trl=={trl_compat.TRL_VERSION}"' in pyproject


@pytest.mark.parametrize("name", sorted(trl_compat.PRIVATE_HOOKS))
def test_private_hooks_we_override_keep_their_signature(name):
    assert hasattr(DPOTrainer, name), f"TRL's DPOTrainer no longer has {name}"
    assert _params(getattr(DPOTrainer, name)) == trl_compat.PRIVATE_HOOKS[name]
    # ...and our override takes the same parameters
    assert _params(getattr(StepwiseDPOTrainer, name)) == trl_compat.PRIVATE_HOOKS[name]


def test_public_compute_loss_is_overridden_with_trls_signature():
    assert "compute_loss" in StepwiseDPOTrainer.__dict__
    assert _params(StepwiseDPOTrainer.compute_loss) == _params(DPOTrainer.compute_loss)
    # TRL's own loss code is not what we rely on any more
    assert "_compute_loss" not in StepwiseDPOTrainer.__dict__


def test_private_attributes_are_still_set_by_trls_init():
    source = inspect.getsource(DPOTrainer.__init__) + inspect.getsource(DPOTrainer._set_signature_columns_if_needed)
    for attr in trl_compat.PRIVATE_ATTRIBUTES:
        assert f"self.{attr} =" in source, f"TRL's DPOTrainer no longer sets self.{attr}"


@pytest.mark.parametrize("name", sorted(trl_compat.HELPERS))
def test_helpers_keep_the_parameters_we_pass(name):
    fn, needed = trl_compat.HELPERS[name]
    params = _params(fn)
    missing = [p for p in needed if p not in params]
    assert not missing, f"{name} lost parameter(s) {missing}: {params}"


def test_no_module_but_trl_compat_imports_a_trl_submodule():
    offenders = []
    for folder in ("trainer", "stepdpo", "labeler", "schemas", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "trl_compat.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("trl.")]
    assert not offenders


def test_use_liger_kernel_is_refused(tmp_path):
    with pytest.raises(ValueError, match="use_liger_kernel is not supported"):
        StepwiseDPOConfig(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[])
