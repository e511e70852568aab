"""The install namespace: the repo's top-level folders ship as `linewatch.<folder>` and are imported so.

pyproject.toml lists the packages by hand (setuptools maps `linewatch.edge` to `edge/`, and so on), so
a new folder with code must be added there; and code that imported `edge...` instead of
`linewatch.edge...` would, run from the repo root, load a second copy of every module it touches
(and fail outright where only the installed wheel exists).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("contract", "deploy", "edge", "export", "trainer")


def test_every_folder_with_code_is_a_listed_package() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {f"linewatch.{f}": f for f in FOLDERS}
    folders = {
        "linewatch." + p.parent.relative_to(REPO).as_posix().replace("/", ".")
        for f in FOLDERS
        for p in (REPO / f).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(setup["packages"]) == sorted(folders)
    assert not (REPO / "linewatch").exists()  # `linewatch` is an implicit namespace package


def test_code_imports_the_parts_only_through_the_namespace() -> None:
    wrong = []
    for path in sorted(REPO.glob("**/*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0].startswith(".") or "__pycache__" in rel.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(rel))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            wrong += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert wrong == []
