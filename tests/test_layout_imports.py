"""The house's one-way dependencies, read from the source: studio → training → feedback → engine, studio →
engine; recipes and research may use the product, the product never uses them; benchmarks use the
product's public names only. Every import counts, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "feedback", "training", "studio", "recipes", "research", "benchmarks")
ALLOWED = {
    "engine": {"engine"},
    "feedback": {"feedback", "engine"},
    "training": {"training", "feedback", "engine"},
    "studio": {"studio", "training", "feedback", "engine"},
    "recipes": {"recipes", "training", "feedback", "engine"},
    "research": {"research", "training", "feedback", "engine"},
    "benchmarks": {"benchmarks", "studio", "training", "feedback", "engine"},
}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _violations(room: str, root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / room).rglob("*.py")):
        for line, module, names in _imports(path, root):
            top = module.split(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if top in PACKAGES and top not in ALLOWED[room]:
                bad.append(where)
            elif room == "benchmarks" and top in PACKAGES and top != "benchmarks":
                private = [n for n in names if n.startswith("_")]
                if private or any(part.startswith("_") for part in module.split(".")):
                    bad.append(f"{where} (private: {', '.join(private) or module})")
    return bad


@pytest.mark.parametrize("room", PACKAGES)
def test_imports_flow_one_way(room: str) -> None:
    assert _violations(room) == []


def test_the_rule_catches_a_wrong_import(tmp_path: Path) -> None:
    """The reader itself: an engine module importing the store, relatively or not, is caught."""
    fake = tmp_path / "engine"
    (fake / "sub").mkdir(parents=True)
    (fake / "sub" / "a.py").write_text("def f():\n    from feedback.store import Store\n")
    (fake / "b.py").write_text("from ..studio import app\n")
    found = _violations("engine", tmp_path)
    assert any("feedback.store" in v for v in found) and any("studio" in v for v in found)


def test_benchmarks_import_no_private_names() -> None:
    assert not [v for v in _violations("benchmarks") if "private" in v]
