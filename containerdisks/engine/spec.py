"""What one discovered entry should look like when published, computed once per sync.

One job: turn an `Entry` (catalog item + upstream artifacts) into the frozen `EntrySpec` that
plan, publish, the engine's memory across passes and retention read: per arch the image config
without `rootfs` (arch, env, the `shasum` and source labels: pipeline/image.py's `config_core`),
the moving tags in push order (containerdisks/tags.py), and how many timestamp tags retention
keeps.

Decisions:
- Built once, at the start of `Engine.sync`; nothing downstream goes back to the catalog item
  (`env`, `keep_for`) or recomputes a config core, so plan compares the published config with
  exactly the bytes publish then writes.
- An arch upstream could not verify (`ArchError`) has no config: `arches` lists the verifiable
  ones, in the entry's order; the entry's own `artifacts` still say which are waiting.
- The unique tags are the first artifact's (every arch of a release carries the same ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from containerdisks import oci
from containerdisks.api import GOARCH, Artifact
from containerdisks.catalog import Entry
from containerdisks.pipeline.image import config_core
from containerdisks.tags import tag_order, timestamp_tag

__all__ = ["ArchSpec", "EntrySpec"]


@dataclass(frozen=True)
class ArchSpec:
    """One arch as it is published: its upstream artifact and its config without `rootfs`."""

    artifact: Artifact
    core: Mapping[str, Any]

    @property
    def arch(self) -> str:
        return self.artifact.arch

    @property
    def platform(self) -> oci.Platform:
        return oci.Platform("linux", GOARCH[self.artifact.arch])


@dataclass(frozen=True)
class EntrySpec:
    """An entry's published shape: config cores by arch, tags, retention."""

    entry: Entry
    arches: tuple[ArchSpec, ...]  # the verifiable arches, in the entry's order
    tags: tuple[str, ...]  # the moving tags (unique, `<version>`, `latest`), in push order
    keep: int  # timestamp tags retention keeps (0: all, retention off)

    @classmethod
    def of(cls, entry: Entry, *, keep_timestamp_tags: int) -> EntrySpec:
        """`keep_timestamp_tags`: the setting, which the catalog item may override."""
        artifacts = [a for a in entry.artifacts if isinstance(a, Artifact)]
        first = entry.artifacts[0] if entry.artifacts else None
        unique = first.unique_tags if isinstance(first, Artifact) else ()
        return cls(
            entry=entry,
            arches=tuple(
                ArchSpec(
                    a,
                    config_core(
                        arch=a.arch,
                        checksum=a.checksum,
                        source_url=a.url,
                        env=entry.item.env(a.arch),
                    ),
                )
                for a in artifacts
            ),
            tags=tuple(tag_order(entry.version, unique=unique, latest=entry.latest)),
            keep=entry.item.keep_for(keep_timestamp_tags),
        )

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def key(self) -> str:
        return self.entry.key

    def tags_at(self, when: datetime) -> list[str]:
        """Every tag of a publish started at `when`: its timestamp tag, then the moving ones."""
        return [timestamp_tag(self.version, when), *self.tags]
