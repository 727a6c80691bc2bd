"""The import rules (pyproject.toml's import-linter contracts) hold, and can fail.

`scripts/check` runs `lint-imports` on the tree; this test runs it on a copy of the tree with
one violating import planted at a time, so a contract that no longer catches anything (a layer
renamed, a module left out) fails here instead of passing silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_copy(tmp_path: Path, *plants: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on a copy of the tree, with each plant = (module file, its source) added."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "containerdisks", copy / "containerdisks")
    shutil.copytree(ROOT / "plugins", copy / "plugins")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for path, source in plants:
        (copy / path).write_text(source)
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{copy / 'plugins'}"}
    lint = shutil.which("lint-imports")
    assert lint is not None
    return subprocess.run(
        [lint, "--no-cache", str(copy / "pyproject.toml")],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_copy(tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("plant", "contract"),
    [
        (("containerdisks/oci/planted.py", "import containerdisks.settings\n"), "layers"),
        (("containerdisks/registry/planted.py", "import containerdisks.engine.core\n"), "layers"),
        (("containerdisks/engine/planted.py", "import containerdisks.commands.push\n"), "layers"),
        (("containerdisks/verify/planted.py", "import containerdisks.docs.page\n"), "layers"),
        (
            ("plugins/containerdisks_builtin/planted.py", "import containerdisks.upstream\n"),
            "plugins import only the plugin contract",
        ),
        (
            ("containerdisks/verify/planted.py", "import containerdisks_builtin.fedora\n"),
            "the core never imports a plugin by name",
        ),
    ],
    ids=["oci-up", "registry-up", "engine-up", "verify-docs-siblings", "plugin", "core-plugin"],
)
def test_a_violating_import_breaks_its_contract(
    tmp_path: Path, plant: tuple[str, str], contract: str
) -> None:
    result = lint_copy(tmp_path, plant)
    assert 1 == result.returncode, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout
    assert "planted" in result.stdout


def test_an_import_cycle_breaks_the_acyclic_contract(tmp_path: Path) -> None:
    result = lint_copy(
        tmp_path,
        ("containerdisks/engine/planted_a.py", "import containerdisks.engine.planted_b\n"),
        ("containerdisks/engine/planted_b.py", "import containerdisks.engine.planted_a\n"),
    )
    assert 1 == result.returncode, result.stdout + result.stderr
    assert "no import cycles between the modules of a package BROKEN" in result.stdout
    assert "planted_a" in result.stdout
