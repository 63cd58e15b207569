"""A wheel installed outside the checkout runs `stepdpo demo` from an empty folder.

The wheel is built from a copy of the sources (nothing is written into the checkout), installed
with ``pip install --no-deps --target DIR``, and run with this venv's python and
``PYTHONPATH=DIR`` only: the dependencies come from the venv, every file of ours from DIR. The
bundled GSM8K sample, its licence and the judge templates must be package data, and nothing may
find them through the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "data", "schemas", "labeler", "trainer",
           "stepdpo")

pytest.importorskip("trl")  # the demo trains


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # No build isolation: no network here, and the venv has setuptools.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(src)], cwd=root, env=env)
    (wheel,) = (root / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("stepdpo/_data/gsm8k/test_sample.jsonl", "stepdpo/_data/gsm8k/test.jsonl",
                   "stepdpo/_data/gsm8k/LICENSE", "labeler/judges/templates/step_judge_v1.txt"):
        assert needed in names, f"{needed} is not in the wheel"
    target = root / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
         cwd=root, env=env)
    return target


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPDPO_")}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", STEPDPO_CACHE_DIR=str(target.parent / "cache"))
    return env


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(installed)
    # every module of ours comes from the install, not from the checkout
    where = _run([sys.executable, "-c", "import schemas, labeler, trainer, stepdpo\n"
                  "print('\\n'.join(m.__file__ for m in (schemas, labeler, trainer, stepdpo)))"], empty, env)
    assert all(line.startswith(str(installed)) for line in where.split()), where
    listing = _run([sys.executable, "-m", "stepdpo", "--help"], empty, env)
    assert "demo" in listing and "label" in listing and "train" in listing

    out = _run([str(installed / "bin" / "stepdpo"), "demo", "--workdir", "w", "--limit", "20",
                "--max-steps", "5"], empty, env)
    assert f"$ stepdpo ingest gsm8k {installed}/stepdpo/_data/gsm8k/test_sample.jsonl" in out
    assert "== training metrics" in out
    assert (empty / "w" / "model-out" / "metrics.jsonl").is_file()
    assert list((empty / "w" / "pairs").glob("part-*.parquet"))
    assert sorted(p.name for p in empty.iterdir()) == ["w"]  # everything it wrote is under --workdir
