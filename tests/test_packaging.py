"""What ``pip install .`` ships: every package of the house (a wheel built without them imports nothing)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_with_an_init_is_in_the_distribution():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(find_packages(ROOT, include=config["packages"]["find"]["include"]))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/**/__init__.py")
               if p.parts[len(ROOT.parts)] in {"acon", "ablation", "studies", "report"}}
    assert on_disk and on_disk == shipped
    assert {"studies.run", "studies.store", "studies.race", "acon.rivals"} <= shipped
