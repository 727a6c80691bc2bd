"""The package's shape: exported names, module docstrings, and what it may import."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import containerdisks.oci as oci

PACKAGE_DIR = Path(oci.__file__).parent
ALLOWED_THIRD_PARTY = {"aiohttp", "yarl"}


def test_every_public_name_is_exported_and_exists() -> None:
    assert sorted(oci.__all__) == sorted(set(oci.__all__))
    for name in oci.__all__:
        assert hasattr(oci, name), name
    public = {n for n in vars(oci) if not n.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(oci.__path__)}
    assert public - set(oci.__all__) - modules == set()


def test_every_module_says_its_job_and_decision() -> None:
    assert "no well-kept async Python OCI client" in " ".join((oci.__doc__ or "").split())
    for info in pkgutil.iter_modules(oci.__path__):
        module = importlib.import_module(f"containerdisks.oci.{info.name}")
        doc = module.__doc__ or ""
        assert "Decision:" in doc or "Decisions:" in doc, info.name
        assert getattr(module, "__all__", None), info.name


def test_imports_only_aiohttp_yarl_stdlib_and_itself() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("containerdisks."):
                    assert name.startswith("containerdisks.oci"), f"{path.name}: {name}"
                else:
                    assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, (
                        f"{path.name}: {name}"
                    )
