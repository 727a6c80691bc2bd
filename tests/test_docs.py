"""Every setting, catalog field and built-in source parameter is documented in docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from containerdisks.catalog import CatalogItem, RepositoryDocs, load_sources
from containerdisks.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented(page: str, section: str | None = None) -> set[str]:
    text = (DOCS / page).read_text()
    if section is not None:
        start = text.index(section)
        nxt = text.find("\n### ", start + len(section))
        text = text[start : nxt if nxt != -1 else None]
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))


def test_every_setting_is_documented() -> None:
    assert set(Settings.model_fields) - documented("settings.md") == set()


def test_every_catalog_field_is_documented() -> None:
    assert set(CatalogItem.model_fields) - documented("catalog.md") == set()


def test_every_repository_docs_field_is_documented() -> None:
    fields = documented("catalog.md", "### Repository fields")
    assert set(RepositoryDocs.model_fields) - fields == set()


@pytest.mark.parametrize("kind", sorted(load_sources()))
def test_every_builtin_source_parameter_is_documented(kind: str) -> None:
    params = type(load_sources()[kind]).Params
    assert set(params.model_fields) - documented("catalog.md", f"### `{kind}`") == set()


def _apt_packages(text: str) -> set[str]:
    """Package names of every `apt-get install` command in `text` (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    found: set[str] = set()
    for line in joined.splitlines():
        if "apt-get install" in line:
            words = line.split("apt-get install", 1)[1].split(";")[0].split()
            found |= {w for w in words if not w.startswith(("-", "$")) and w != "\\"}
    return found


def test_the_readme_lists_every_package_ci_installs() -> None:
    """A newcomer installs what the README lists; CI installs its own list: the same one."""
    root = Path(__file__).parents[1]
    readme = _apt_packages((root / "README.md").read_text())
    ci = _apt_packages((root / ".ci" / "run").read_text())
    assert "docker-registry" in ci
    assert ci == readme
