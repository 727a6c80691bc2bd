"""The map stays honest: README's Layout and docs/architecture.md against the tree.

- Every module path the two name exists: the Layout's tree and the tree in "The map" (paths
  built from the indentation), and every `*.py` path in backticks anywhere in the architecture
  page (`engine/publish.py` means `containerdisks/engine/publish.py`).
- Every package under `containerdisks/` and every top-level module of it is named in both trees.
- No file tracked by git (code, config, pyproject, docs, tests) points outside the repository:
  a clone has no design notes or reference files beside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "containerdisks"
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# A tree line indented this far continues the description of the line above it.
CONTINUATION = 16
# Backticked paths in prose that start here are relative to the repository, others to the package.
ROOTED = ("containerdisks/", "plugins/", "tests/", "config/", "benchmarks/", "scripts/")


def fenced_block(text: str, heading: str) -> str:
    """The first ``` block after `heading`."""
    start = text.index(heading)
    opened = text.index("```", start)
    body = text.index("\n", opened) + 1
    return text[body : text.index("```", body)]


def tree_paths(block: str) -> list[str]:
    """Repository-relative paths of a tree drawn as `name  description` lines, nesting by indent;
    `a.py, b.py` names several, and a name ending in `/` holds the lines indented below it."""
    paths: list[str] = []
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= CONTINUATION:
            continue
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = parents[-1][1] if parents else ""
        names = re.split(r"\s{2,}", line.strip())[0].split(", ")
        for name in names:
            paths.append(prefix + name)
        if len(names) == 1 and names[0].endswith("/"):
            parents.append((indent, prefix + names[0]))
    return paths


def prose_modules(text: str) -> list[str]:
    """`*.py` paths in backticks, outside fenced blocks, made repository-relative."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    found = re.findall(r"`([\w./-]+\.py)`", prose)
    return [p if p.startswith(ROOTED) else f"containerdisks/{p}" for p in found]


README_TREE = tree_paths(fenced_block(README.read_text(), "## Layout"))
MAP_TREE = tree_paths(fenced_block(ARCHITECTURE.read_text(), "## The map"))
NAMED = sorted(
    {("README.md", p) for p in README_TREE}
    | {("docs/architecture.md", p) for p in MAP_TREE}
    | {("docs/architecture.md", p) for p in prose_modules(ARCHITECTURE.read_text())}
)
PACKAGES = sorted(
    f"{p.parent.relative_to(ROOT).as_posix()}/"
    for p in PACKAGE.rglob("__init__.py")
    if p.parent != PACKAGE and ".venv" not in p.parts
)
TOP_MODULES = sorted(
    f"containerdisks/{p.name}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"
)


def test_the_trees_are_read() -> None:
    # Guards the parser: a Layout it cannot read would make every check below pass vacuously.
    assert "containerdisks/engine/" in README_TREE
    assert "containerdisks/cli.py" in MAP_TREE
    assert "containerdisks/__main__.py" in MAP_TREE
    assert "plugins/containerdisks_builtin/" in MAP_TREE


@pytest.mark.parametrize(("page", "path"), NAMED, ids=[f"{d}:{p}" for d, p in NAMED])
def test_every_named_path_exists(page: str, path: str) -> None:
    assert (ROOT / path).exists(), f"{page} names {path}, which is not in the tree"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_in_the_readme_layout(package: str) -> None:
    assert package in README_TREE


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_on_the_architecture_map(package: str) -> None:
    assert package in MAP_TREE


@pytest.mark.parametrize("module", TOP_MODULES)
def test_every_top_level_module_is_in_the_readme_layout(module: str) -> None:
    assert module in README_TREE


@pytest.mark.parametrize("module", TOP_MODULES)
def test_every_top_level_module_is_on_the_architecture_map(module: str) -> None:
    assert module in MAP_TREE


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


# Written in pieces, so that this file does not name what it looks for.
OUTSIDE = {
    "design notes": re.escape("DESIGN" + ".md"),
    "style notes": re.escape("STYLE" + ".md"),
    "reference files": r"(?<![\w/.-])" + re.escape("reference" + "/"),
    "the shared directory": re.escape(".." + "/shared"),
}


@pytest.mark.parametrize("what", sorted(OUTSIDE))
def test_no_tracked_file_points_outside_the_repository(what: str) -> None:
    pattern = re.compile(OUTSIDE[what])
    hits = []
    for path in tracked_files():
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert [] == hits
