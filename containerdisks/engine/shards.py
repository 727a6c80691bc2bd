"""Shard assignment: which part of the catalog each of N shards publishes.

One job: a pure function from the catalog's entries (a key and a weight each) and a shard count
to N disjoint lists of keys that together hold every key once. No I/O, no clock, no settings read:
`images push --shard I/N` (an Indexed Job's completion index) takes part I of it, and daemon
replicas sharing S shards take parts of the same function's answer.

Decisions:
- Deterministic everywhere: the answer depends only on the keys, their weights and N — never on
  input order, Python's per-process `hash()` salt, the machine or the clock. Keys are sorted
  (weight descending, then key), so the same catalog and N give the same shards on every run.
- Balanced by weight, not by count: the weight of a catalog entry is the number of arches it
  declares (each arch is one download, one image, one upload). Longest-processing-time first:
  every key in that order goes to the least loaded shard, ties to the lowest index. The most
  loaded shard then carries at most the mean plus one key's weight (the shard that took its last
  key was the least loaded, so at most the mean, before it), and in practice within 1.1x the
  mean once there are a few keys per shard.
- The unit is a catalog entry as declared, before discovery: a shard discovers only its own
  entries, so no shard asks upstream about another's. An entry that discovers several versions
  (Fedora's `fedora:*` publishes the maintained releases) stays whole in one shard and weighs
  only its declared arches; the imbalance that leaves is bounded by that entry's real load.
- More shards than keys leaves some shards empty (a shard with nothing to do is not an error).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from containerdisks.catalog import CatalogItem

__all__ = ["assign", "catalog_weights", "imbalance", "loads", "shard_keys"]


def assign(entries: Iterable[tuple[str, int]], count: int) -> list[list[str]]:
    """`entries` as `(key, weight)` pairs split into `count` shards: shard i's keys, sorted.

    Every key lands in exactly one shard; a repeated key, a weight below 1 or a count below 1 is
    a ValueError (the caller's bug: settings.py bounds the count a user may give)."""
    if count < 1:
        raise ValueError(f"shard count {count} is below 1")
    weights: dict[str, int] = {}
    for key, weight in entries:
        if key in weights:
            raise ValueError(f"key {key!r} is listed twice")
        if weight < 1:
            raise ValueError(f"key {key!r} has weight {weight}, below 1")
        weights[key] = weight
    shards: list[list[str]] = [[] for _ in range(count)]
    lightest = [(0, i) for i in range(count)]  # (load, index): a heap, ties to the lowest index
    for key in sorted(weights, key=lambda k: (-weights[k], k)):
        load, i = heapq.heappop(lightest)
        shards[i].append(key)
        heapq.heappush(lightest, (load + weights[key], i))
    return [sorted(keys) for keys in shards]


def loads(shards: Sequence[Sequence[str]], weights: Mapping[str, int]) -> list[int]:
    """Each shard's total weight."""
    return [sum(weights[k] for k in keys) for keys in shards]


def imbalance(shards: Sequence[Sequence[str]], weights: Mapping[str, int]) -> float:
    """The most loaded shard's weight over the mean (1.0: perfectly even; 0 when empty)."""
    per_shard = loads(shards, weights)
    total = sum(per_shard)
    return max(per_shard) * len(per_shard) / total if total else 0.0


def catalog_weights(items: Iterable[CatalogItem]) -> dict[str, int]:
    """The catalog's keys (`name:version`, or `name:*` for an entry that discovers its versions)
    and their weights, the arches each declares."""
    return {item.label: len(item.arches) for item in items}


def shard_keys(items: Iterable[CatalogItem], index: int, count: int) -> frozenset[str]:
    """The keys of shard `index` of `count` over the whole catalog `items` (every entry, also
    those published only when focused, so a focus never moves an entry to another shard)."""
    return frozenset(assign(catalog_weights(items).items(), count)[index])
