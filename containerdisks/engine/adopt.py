"""Adopting what medius published: a cut-over from medius republishes nothing.

One job: decide whether a published config that differs from the one we would build differs
only in how medius (the Go tool this project succeeds) writes a config, so that the planner can
keep it as `up-to-date` instead of rebuilding every image of a registry on the first pass.

medius's config (go-containerregistry) carries the `shasum` label only, a zero `created`
(`0001-01-01T00:00:00Z`), one empty `history` entry, and its `Env` in Go map order (random).
Ours carries `org.opencontainers.image.source` beside `shasum`, no `created`, no `history`, and
a sorted `Env`. A published config is *adopted* when, after taking away exactly those
differences, it equals ours:

- `created` is dropped only when it is the zero time, `history` only when it is one entry that is
  empty (`{}`, or only the zero `created`); anything else there is a real difference;
- `Env` is compared as a sorted list (medius's order carries no meaning);
- our source label is left out of the comparison only when the published config has none (a
  different source URL is a difference);
- the image must have exactly one layer (`rootfs` is otherwise not compared: the `shasum` label
  pins the upstream bytes, as for our own images).

Everything else (a foreign label, another entrypoint, env value, arch, a second layer) is not
adopted, and the arch is rebuilt. Adoption lasts until the arch's upstream checksum changes or
`--force` is given: the planner checks `shasum` and `--force` before it asks here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from containerdisks.pipeline.image import SOURCE_LABEL

__all__ = ["ZERO_TIME", "adoptable"]

#: Go's zero `time.Time`, as go-containerregistry writes it.
ZERO_TIME = "0001-01-01T00:00:00Z"


def adoptable(published: Mapping[str, Any], core: Mapping[str, Any], *, one_layer: bool) -> bool:
    """Whether `published` (a whole config) differs from `core` (ours, without `rootfs`) only
    in what medius writes and we do not, or what we add; `one_layer`: the manifest has one."""
    if not one_layer:
        return False
    rootfs = published.get("rootfs")
    if not isinstance(rootfs, Mapping) or len(rootfs.get("diff_ids") or []) != 1:
        return False
    have = {k: v for k, v in published.items() if k != "rootfs"}
    if have.get("created") == ZERO_TIME:
        del have["created"]
    if _empty_history(have.get("history")):
        del have["history"]
    inner = have.get("config")
    if not isinstance(inner, Mapping):
        return False
    inner = dict(inner)
    if isinstance(inner.get("Env"), list) and all(isinstance(e, str) for e in inner["Env"]):
        inner["Env"] = sorted(inner["Env"])
    have["config"] = inner
    want = dict(core)
    labels = inner.get("Labels")
    if isinstance(labels, Mapping) and SOURCE_LABEL not in labels:
        want_inner = dict(want["config"])
        want_inner["Labels"] = {k: v for k, v in want_inner["Labels"].items() if k != SOURCE_LABEL}
        want["config"] = want_inner
    return have == want


def _empty_history(history: object) -> bool:
    if not isinstance(history, list) or len(history) != 1:
        return False
    (only,) = history
    return isinstance(only, Mapping) and all(
        key == "created" and value == ZERO_TIME for key, value in only.items()
    )
