"""Imports point only down the layers of docs/architecture.md: a package never imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketlm"
BASE = {"errors", "fsutil", "config", "runs", "device"}
# what each package may import besides itself and the base layer
ALLOWED = {
    "data": set(),
    "model": {"data"},
    "retrieval": {"data", "model"},
    "inference": {"data", "model"},
    "train": {"data", "model", "retrieval", "inference"},
    "evaluate": {"data", "model", "retrieval", "inference"},
    "export": {"data", "model", "retrieval"},
    "serve": {"data", "model", "retrieval", "inference"},
    "compress": {"data", "model", "retrieval", "inference", "evaluate", "export"},
    "bot": {"data", "model", "retrieval", "inference", "train", "evaluate", "export", "serve"},
}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pocketlm"):
            parts = node.module.split(".")
            if len(parts) > 1:
                names.add(parts[1])
            else:  # from pocketlm import runs
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pocketlm."))
    return names


def test_imports_point_only_down():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((SRC / package).glob("*.py")):
            for name in _imported(path) - allowed - BASE - {package}:
                wrong.append(f"{path.relative_to(SRC)} imports pocketlm.{name}")
    for name in BASE:
        upward = _imported(SRC / f"{name}.py") - BASE
        wrong += [f"{name}.py imports pocketlm.{n}" for n in upward]
    assert not wrong, "\n".join(wrong)


def test_every_package_has_a_place():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)
