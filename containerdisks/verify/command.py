"""`images verify`: read the results file, verify every entry at stage `push`, write stage
`verify` back, print one row per entry, exit as medius.

One job: wiring. Selection is `target.select_targets`, the flow `flow.verify_all`, the boot
`local.LocalBooter` (qemu here) or `kube.KubeBooter` (a VM in KubeVirt). Decisions:
- Dry run (the default, as for every command here; medius's verify ignored it) prints what would
  be booted and boots, pulls and writes nothing.
- In KubeVirt the VM runs `<--registry>/<Tags[0]>` as medius (the registry as the cluster sees
  it; nothing is read from it here); the arch is the first node's unless given.
- Locally the image is pulled by the digest push recorded; a results file without one (medius's) has
  `Tags[0]` resolved once, and the digest found is recorded for promote.
- Entries the flow did not verify (skipped, other stages, other arches) keep their record as it
  was; the file is rewritten atomically, only when not a dry run (exit 1 when it cannot be).
- `--local` (not a dry run) checks the work dir first: ours alone, or exit 2 (workdir.py).
- Exit 1 when an entry failed, 0 with `--no-fail`; a skip is not a failure, and not a pass.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
from kubernetes_asyncio import client as kclient

from containerdisks import oci
from containerdisks.catalog import Catalog, Focus, load_catalog
from containerdisks.engine.results import Result, ResultsError, read_results, write_results
from containerdisks.engine.stores import Place, open_places
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError, Settings
from containerdisks.verify import kube, qemu
from containerdisks.verify.flow import Verdict, render, verify_all
from containerdisks.verify.local import LocalBooter, LocalError, private_dir, remove_stale_work
from containerdisks.verify.ssh import SshCheck
from containerdisks.verify.target import Skipped, Target, select_targets
from containerdisks.workdir import own_work_dir

__all__ = ["images_verify"]

log = structlog.get_logger(__name__)


async def _with_digest(place: Place, target: Target) -> Target | Verdict:
    """The target with the digest to boot: the recorded one, else what `Tags[0]` names now."""
    if target.digest:
        return target
    repo = place.repo(target.name)
    where = f"{place.store.host}/{repo}:{target.first_tag}"
    try:
        head = await place.store.head_manifest(repo, target.first_tag)
    except oci.OCIError as e:
        head, why = None, str(e)
    else:
        why = "not found"
    if head is None:
        message = f"{target.key}: {where}: {why}"
        result = Result(target.result.tags, message, "verify")
        return Verdict(target.key, target.arch, "failed", f"{where}: {why}", result=result)
    return Target(**{**target.__dict__, "digest": head.digest})


async def images_verify(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    if not settings.verify_local and not settings.verify_registry:
        raise ConfigError(
            "images verify: --registry is required (the registry as the cluster sees it)"
        )
    if settings.verify_local and not settings.dry_run:
        own_work_dir(settings.work_dir)  # boots pull and run disks there
    try:
        results = read_results(settings.results_file)
    except ResultsError as e:
        raise ConfigError(str(e)) from None
    catalog = load_catalog(config, config_name=config_name)
    focus = Focus(settings.focus)
    if focus.name is not None:
        catalog.select(focus)  # a focus that names no catalog entry is a usage error
    if settings.verify_local:
        verdicts = await _run_local(settings, results, catalog, focus)
    else:
        verdicts = await _run_kube(settings, results, catalog, focus)
    order = {key: i for i, key in enumerate(results)}
    verdicts.sort(key=lambda v: order.get(v.key, len(order)))
    render(verdicts, out)
    if not settings.dry_run:
        updated = dict(results)
        for v in verdicts:
            if v.result is not None:
                updated[v.key] = v.result
        try:
            write_results(Path(settings.results_file), updated)
        except ResultsError as e:
            log.error("results_not_written", error=str(e))
            return 1
    failed = [v for v in verdicts if v.status == "failed"]
    if failed and not settings.no_fail:
        return 1
    return 0


def _choose(
    results: dict[str, Result], catalog: Catalog, focus: Focus, goarch: str
) -> tuple[list[Target | Skipped], list[Verdict]]:
    chosen, problems = select_targets(results, (b.item for b in catalog.items), focus, goarch)
    verdicts: list[Verdict] = []
    for key, message in problems.items():
        log.error("verify_failed", entry=key, error=message)
        prior = results[key]
        verdicts.append(
            Verdict(
                key,
                goarch,
                "failed",
                message.removeprefix(f"{key}: "),
                result=Result(prior.tags, message, "verify", prior.digest),
            )
        )
    return chosen, verdicts


async def _run_kube(
    settings: Settings, results: dict[str, Result], catalog: Catalog, focus: Focus
) -> list[Verdict]:
    """In KubeVirt: the image is `<--registry>/<Tags[0]>` as the cluster pulls it (medius)."""
    try:
        cfg = await kube.load_config(settings.kubeconfig)
    except kube.KubeError as e:
        raise ConfigError(f"images verify: {e}") from None
    async with kclient.ApiClient(cfg) as api:
        try:
            goarch = settings.target_architecture or await kube.node_architecture(api)
        except kube.UntrustedServerError as e:  # --target-architecture would not help
            raise ConfigError(f"images verify: {e}") from None
        except kube.KubeError as e:
            raise ConfigError(f"images verify: {e} (or give --target-architecture)") from None
        chosen, verdicts = _choose(results, catalog, focus, goarch)
        booter = kube.KubeBooter(
            api,
            cfg,
            registry=settings.verify_registry,
            namespace=settings.verify_namespace,
            timeout=settings.verify_timeout,
            poll=settings.verify_poll_interval,
            retry_interval=settings.verify_retry_interval,
            retry_attempts=settings.verify_ssh_attempts,
        )
        check = SshCheck(
            timeout=settings.verify_timeout,
            attempts=settings.verify_ssh_attempts,
            pause=settings.verify_retry_interval,
            count_unanswered=True,  # each try is a port-forward: medius's 30 x 10 s
        )
        verdicts += await verify_all(
            chosen, booter, check, workers=settings.workers, dry_run=settings.dry_run
        )
    return verdicts


async def _run_local(
    settings: Settings, results: dict[str, Result], catalog: Catalog, focus: Focus
) -> list[Verdict]:
    host = qemu.probe_host()
    goarch = settings.target_architecture or host.goarch
    chosen, verdicts = _choose(results, catalog, focus, goarch)
    registry = settings.verify_registry or settings.target
    backoff = RetryPolicy.for_registry(settings.retries)
    source = settings.model_copy(update={"source_registry": registry, "target_registry": ""})
    try:
        account = qemu.qemu_account(settings.verify_qemu_user)
    except qemu.QemuError as e:
        raise ConfigError(f"images verify: {e}") from None
    async with open_places(source, backoff) as (place, _):
        if not settings.dry_run:
            remove_stale_work(settings.work_dir)
            kept = settings.work_dir / "serial-logs"
            try:
                if kept.exists() or kept.is_symlink():
                    private_dir(kept)  # an older version's 0755 is fixed now, not at a failure
            except LocalError as e:
                raise ConfigError(f"images verify: {e}") from None
        ready: list[Target | Skipped] = []
        for c in chosen:
            if isinstance(c, Target) and not settings.dry_run:
                got = await _with_digest(place, c)
                if isinstance(got, Verdict):
                    verdicts.append(got)
                else:
                    ready.append(got)
            else:
                ready.append(c)
        booter = LocalBooter(
            store=place.store,
            namespace=place.namespace,
            host_name=place.store.host,
            work_dir=settings.work_dir,
            host=host,
            firmware=settings.verify_firmware,
            accel=settings.verify_accel,
            memory_mib=settings.verify_memory_mib,
            backoff=backoff,
            max_virtual_size=settings.max_virtual_size,
            max_disk_bytes=settings.max_image_bytes,
            account=account,
        )
        check = SshCheck(timeout=settings.verify_timeout, attempts=settings.verify_ssh_attempts)
        verdicts += await verify_all(
            ready, booter, check, workers=settings.workers, dry_run=settings.dry_run
        )
    return verdicts
