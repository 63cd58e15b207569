"""Build hook: the top-level ``data/`` folder ships inside the wheel as ``stepdpo/_data``.

The repository keeps bundled samples where the design names them (``data/``); an installed
wheel has no checkout beside it, so the build copies them into the package, where
:func:`stepdpo.bundled.bundled_file` finds them with importlib.resources. Everything else about
the distribution is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = Path(__file__).resolve().parent / "data"


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "stepdpo" / "_data"
        for src in sorted(DATA.rglob("*")):
            if src.is_file() and not src.name.startswith("."):
                dst = target / src.relative_to(DATA)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithData})
