"""The dependency rules of DESIGN.md §2, enforced on whatever code is in the tree now.

- ``schemas`` imports only pyarrow (and numpy, which pyarrow needs) and the standard library.
- ``labeler`` and every API-judge path never import torch or transformers; only the local-PRM
  judge may, lazily.
- ``trainer`` never imports ``labeler``.

The runtime checks run in a fresh interpreter: inside pytest other tests have already imported
torch, so ``sys.modules`` here proves nothing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "trl", "accelerate", "peft", "datasets")
# Modules allowed to import the heavy stack at module level: the local PRM judge only.
HEAVY_ALLOWED = {"labeler.judges.prm"}
# Command modules that may import the training stack when they run.
TRAIN_COMMAND_MODULES = {"stepdpo.commands.train", "stepdpo.commands.precompute_ref"}


def _modules(package: str) -> list[str]:
    root = REPO / package
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_imports_pull_in_no_heavy_stack():
    code = f"""
import json, sys
import schemas, labeler, stepdpo.cli, labeler.judges, labeler.sources.ingest, stepdpo.commands.ingest
import labeler.sources.ingest.gsm8k, labeler.sources.ingest.prm800k, labeler.sources.ingest.generic, labeler.sources.splitters
import stepdpo.options, labeler.judges.registry, labeler.judges.config, labeler.judges.base
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""
    assert _run(code) == []


def test_every_labeler_module_is_free_of_torch_and_transformers():
    """Import each labeler module in turn and name the first one that drags torch in."""
    modules = [m for m in _modules("labeler") + _modules("stepdpo")
               if m not in HEAVY_ALLOWED and m not in TRAIN_COMMAND_MODULES]
    assert "stepdpo.commands.ingest" in modules and len(modules) > 10
    code = f"""
import importlib, json, sys
culprits, broken = {{}}, {{}}
for name in {modules!r}:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a module of another part, mid-edit or needing an extra
        broken[name] = f"{{type(exc).__name__}}: {{exc}}"
        continue
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    if heavy:
        culprits[name] = heavy
        break
print(json.dumps({{"culprits": culprits, "broken": broken}}))
"""
    result = _run(code)
    assert result["culprits"] == {}, f"imports torch/transformers at module level: {result['culprits']}"
    # An API judge whose SDK is missing is fine; any other import failure is a bug.
    broken = {k: v for k, v in result["broken"].items()
              if not v.startswith(("ModuleNotFoundError: No module named 'openai'",
                                   "ModuleNotFoundError: No module named 'anthropic'"))}
    assert broken == {}


def test_schemas_imports_only_pyarrow_and_stdlib():
    modules = _modules("schemas")
    code = f"""
import json, sys
before = set(sys.modules)
for name in {modules!r}:
    __import__(name)
new = {{m.split('.')[0] for m in set(sys.modules) - before}}
print(json.dumps(sorted(new)))
"""
    new = _run(code)
    allowed = {"schemas", "pyarrow", "numpy", "cython_runtime"}
    foreign = [m for m in new if m not in allowed and m not in sys.stdlib_module_names
               and not m.startswith("_cython")]
    assert foreign == []
    assert "pyarrow" in new


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            # importlib.import_module("labeler.x") / __import__("labeler")
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


def test_schemas_source_imports_only_pyarrow_and_stdlib():
    bad = []
    for path in sorted((REPO / "schemas").rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top not in ("schemas", "pyarrow", "__future__") and top not in sys.stdlib_module_names:
                bad.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert bad == []


def test_trainer_never_imports_labeler():
    files = sorted((REPO / "trainer").rglob("*.py"))
    assert files, "trainer/ has no Python files"
    bad = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in files
        for line, name in _imports(path)
        if name == "labeler" or name.startswith("labeler.")
    ]
    assert bad == []


def test_ast_scan_catches_every_import_form(tmp_path):
    """The scanner itself: each way of importing labeler is found."""
    src = tmp_path / "m.py"
    src.write_text(
        "import labeler\n"
        "from stepdpo.cli import main\n"
        "def f():\n"
        "    import labeler.sources.ingest as li\n"
        "    import importlib\n"
        "    importlib.import_module('labeler.sources.splitters')\n"
        "from . import sibling\n"
    )
    assert sorted(n for _, n in _imports(src)) == sorted(
        ["labeler", "stepdpo.cli", "labeler.sources.ingest", "importlib", "labeler.sources.splitters"]
    )


@pytest.mark.parametrize("package", ["schemas", "labeler", "trainer"])
def test_packages_have_no_syntax_errors(package):
    for path in (REPO / package).rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
