"""What one verification is about: a pushed entry, the arch to boot, and how the catalog
says to boot it (login user, Secure Boot, guest agent).

Chosen from the results file as medius does (`verify.go`): only entries at stage `push`
without an error, and only the target architecture of each. An entry an earlier stage failed
(`Err` set) is a problem, not a skip: medius ends verify with exit 1 for it (`Failed`). An entry
whose catalog item names no login user (cirros) is booted without the SSH check: it passes
when the VM boots, as in medius. The catalog gives what the
results file does not: the entry's arches, its default user and its boot options; a discovering
source's items (Fedora) are matched by name, so no network is needed to select.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from containerdisks.api import GOARCH
from containerdisks.catalog import CatalogItem, Focus
from containerdisks.engine.results import Result

__all__ = ["Failed", "Skipped", "Target", "select_targets"]


@dataclass(frozen=True)
class Target:
    key: str
    name: str
    version: str
    arch: str  # upstream name, as in the catalog
    result: Result
    digest: str  # empty when push did not record one (a medius results file)
    user: str  # empty: no login user in the catalog; the VM booting is the whole check
    secure_boot: bool
    guest_agent: bool

    @property
    def goarch(self) -> str:
        return GOARCH[self.arch]

    @property
    def first_tag(self) -> str:
        return self.result.bare_tags()[0]


@dataclass(frozen=True)
class Skipped:
    key: str
    arch: str
    why: str


@dataclass(frozen=True)
class Failed:
    """An entry an earlier stage failed: not booted, its record kept, and the run fails."""

    key: str
    arch: str
    stage: str
    error: str


def _item_for(items: Iterable[CatalogItem], name: str, version: str) -> CatalogItem | None:
    candidates = [i for i in items if i.name == name and i.version in (version, None)]
    exact = [i for i in candidates if i.version == version]
    return (exact or candidates)[0] if candidates else None


def select_targets(
    results: Mapping[str, Result], items: Iterable[CatalogItem], focus: Focus, goarch: str
) -> tuple[list[Target | Skipped | Failed], dict[str, str]]:
    """Targets (and skips, in results order) for `goarch`, and by key the one-line problems
    that make an entry fail without a boot (not in the catalog, no user, no tags)."""
    items = list(items)
    chosen: list[Target | Skipped | Failed] = []
    problems: dict[str, str] = {}
    arch_of = {v: k for k, v in GOARCH.items()}
    arch = arch_of.get(goarch, goarch)
    for key, result in results.items():
        name, _, version = key.partition(":")
        if not focus.selects_key(name, version):
            continue
        if result.error:
            chosen.append(Failed(key, arch, result.stage, result.error))
            continue
        if result.stage != "push":
            chosen.append(Skipped(key, arch, f"already at stage {result.stage}"))
            continue
        item = _item_for(items, name, version)
        if item is None:
            problems[key] = f"{key}: not in the catalog (its user and arches are unknown)"
            continue
        if arch not in item.arches:
            chosen.append(Skipped(key, arch, f"no {goarch} image"))
            continue
        if not result.tags:
            problems[key] = f"{key}: no containerdisks to verify (no tags in the results file)"
            continue
        chosen.append(
            Target(
                key=key,
                name=name,
                version=version,
                arch=arch,
                result=result,
                digest=result.digest,
                user=item.user or "",
                secure_boot=item.secure_boot_for(arch),
                guest_agent=item.guest_agent,
            )
        )
    return chosen, problems
