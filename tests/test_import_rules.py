"""The dependency rules of DESIGN.md §2, enforced on whatever code is in the tree now.

- ``schemas`` imports only pyarrow (and numpy, which pyarrow needs) and the standard library.
- ``labeler`` and every API-judge path never import torch or transformers; only the local-PRM
  judge may, lazily.
- ``labeler`` never imports ``trainer`` or ``stepdpo``; ``trainer`` imports only ``schemas`` of
  ours; ``stepdpo`` (the application) may import everything, and nothing imports it.
- No module uses another module's private (``_underscore``) name.

The runtime checks run in a fresh interpreter: inside pytest other tests have already imported
torch, so ``sys.modules`` here proves nothing.
"""

from __future__ import annotations

import ast
import functools
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


def test_package_apis_load_their_modules_lazily():
    """``labeler.engine`` / ``labeler.batch`` re-export their public names, but importing the
    packages loads no pyarrow, diskcache or provider SDK until a name is used."""
    code = """
import json, sys
import labeler.engine, labeler.batch, labeler.judges, labeler.errors
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'diskcache', 'openai', 'anthropic'})))
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


# -- which of our packages may import which -------------------------------------------------------

OURS = ("schemas", "labeler", "trainer", "stepdpo")
#: package -> our packages it may import (besides itself)
MAY_IMPORT = {
    "schemas": set(),
    "labeler": {"schemas"},
    "trainer": {"schemas"},
    "stepdpo": {"schemas", "labeler", "trainer"},
}


def _our_imports(package: str) -> list[tuple[str, int, str]]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    out = []
    for path in files:
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in OURS and top != package:
                out.append((f"{path.relative_to(REPO)}:{line}", top, name))
    return out


@pytest.mark.parametrize("package", OURS)
def test_packages_import_only_what_the_layout_allows(package):
    bad = [f"{where}: {name}" for where, top, name in _our_imports(package) if top not in MAY_IMPORT[package]]
    assert bad == [], f"{package} may import only {sorted(MAY_IMPORT[package]) or 'nothing of ours'}"


def test_the_layout_rules_are_the_documented_ones():
    """labeler never imports trainer or stepdpo; trainer only schemas; only stepdpo everything."""
    assert "trainer" not in MAY_IMPORT["labeler"] and "stepdpo" not in MAY_IMPORT["labeler"]
    assert MAY_IMPORT["trainer"] == {"schemas"}
    assert all("stepdpo" not in allowed for allowed in MAY_IMPORT.values())
    assert MAY_IMPORT["stepdpo"] == set(OURS) - {"stepdpo"}


# -- no module uses another module's private name ------------------------------------------------

#: Where the private-name rule is checked: our packages, and the benchmarks and tests that use them.
PRIVATE_SCAN = ("schemas", "labeler", "trainer", "stepdpo", "bench", "tests")
#: Private names of third-party objects that collide with a private name of ours and are
#: reached on an instance the scan cannot trace to its import (TRL's trainer keeps its metrics
#: in ``_metrics``, which the trainer tests read on a trainer object).
THIRD_PARTY_PRIVATE = {"_metrics"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_definitions(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, module and instance attributes."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            name = node.attr
        else:
            continue
        if _is_private(name):
            found.add(name)
    return found


def _third_party_names(tree: ast.AST) -> set[str]:
    """Names bound by importing another project (``from trl import DPOTrainer``, ``import trl``):
    their private attributes are that project's business (TRL's pinned by test_trl_surface)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] not in OURS:
            found |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] not in OURS}
    return found


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _private_uses(path: Path, theirs: set[str]) -> list[str]:
    """Uses in ``path`` of a private name that only other modules of ours define.

    Caught: ``from ours import _x``; ``mod._x`` / ``obj._x`` on anything but ``self``, ``cls``
    or ``super()``; ``getattr(obj, "_x")`` (and has/setattr). A module's own private names
    (a method of its class reached on another instance, a module-level helper) are its own.
    """
    tree = _parse(path)
    own = _private_definitions(tree)
    foreign = _third_party_names(tree)
    where = path.relative_to(REPO)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            bad += [f"{where}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in foreign):
                continue
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                continue
            if node.attr in theirs and node.attr not in own and node.attr not in THIRD_PARTY_PRIVATE:
                bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and node.args[1].value in theirs
              and node.args[1].value not in own):
            bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return sorted(bad, key=lambda b: int(b.split(":")[1]))


def _scan_private(root: Path, scan: tuple[str, ...]) -> list[str]:
    ours = [p for pkg in OURS for p in sorted((root / pkg).rglob("*.py"))]
    defined = {p: _private_definitions(_parse(p)) for p in ours}
    where: dict[str, int] = {}  # private name -> how many of our modules define it
    for names in defined.values():
        for name in names:
            where[name] = where.get(name, 0) + 1
    bad = []
    for pkg in scan:
        for path in sorted((root / pkg).rglob("*.py")):
            mine = defined.get(path, set())
            theirs = {n for n, k in where.items() if k > (n in mine)}
            bad += _private_uses(path, theirs)
    return bad


def test_no_module_uses_another_modules_private_name():
    assert _scan_private(REPO, PRIVATE_SCAN) == []


def test_private_name_scan_catches_each_form(tmp_path, monkeypatch):
    """The scanner itself, on a planted two-module tree: every form is found, own names are not."""
    (tmp_path / "labeler").mkdir()
    for pkg in OURS[:1] + OURS[2:]:
        (tmp_path / pkg).mkdir()
    (tmp_path / "labeler" / "engine.py").write_text(
        "class Engine:\n"
        "    def _flush(self):\n"
        "        self._buffer = []\n"
        "    def merge(self, other):\n"
        "        other._flush()\n"  # another instance of its own class: fine
        "def _say(msg):\n"
        "    pass\n"
    )
    (tmp_path / "labeler" / "batch.py").write_text(
        "from labeler.engine import Engine, _say\n"
        "import labeler.engine as eng\n"
        "def run(engine, judge):\n"
        "    engine._flush()\n"
        "    eng._say('x')\n"
        "    key = getattr(judge, '_buffer', None)\n"
        "    super_ok = self._flush\n"
        "    third_party = judge._commit_hash\n"  # defined by none of ours: not our rule
        "    from trl import DPOTrainer\n"
        "    trl_owned = DPOTrainer._flush\n"  # TRL's own private, pinned elsewhere
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _scan_private(tmp_path, ("labeler",))
    assert found == [
        "labeler/batch.py:1: from labeler.engine import _say",
        "labeler/batch.py:4: engine._flush",
        "labeler/batch.py:5: eng._say",
        "labeler/batch.py:6: getattr(judge, '_buffer', None)",
    ]
