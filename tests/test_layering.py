"""Dependencies point inward: studio → shared ← daemon (docs/architecture.md).

Reads every module's imports with `ast` (nothing is imported), so a violation anywhere in
the tree fails here, even in code no other test reaches.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "shared": {"torch", "daemon", "studio", "streamlit", "zmq"},
    "studio": {"daemon", "torch"},
    "daemon": {"studio", "streamlit"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package):
    assert modules_of(package), f"{package}/ has no modules"
    violations = []
    for path in modules_of(package):
        bad = imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert violations == []


def test_the_checker_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\nfrom daemon.jobs import JobStore\nimport torch.nn as nn\n")
    assert imported_top_levels(sample) == {"os", "daemon", "torch"}
