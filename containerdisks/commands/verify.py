"""`images verify`: read the results file, verify every entry at stage `push`, write stage
`verify` back, print one row per entry, exit as medius.

One job: wiring. Selection is `target.select_targets`, the flow `flow.verify` (run over the
targets by the commands' runner, `--workers` at once), the boot
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
- With `--verify-key`, before anything is booted (both modes, not in a dry run), the digest to
  boot must carry a signature and provenance that check with the key (registry/attach.py),
  else the entry fails with one line and is not booted. In KubeVirt the check is of the digest
  `Tags[0]` names in `--registry` when it is read, just before the VM is created.
- Exit 1 when an entry failed, 0 with `--no-fail`; a skip is not a failure, and not a pass.
  An entry an earlier stage failed (`Err` in the results file) is a failure too, as in medius:
  its row says so, one log line names every such entry, and its record is kept as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from containerdisks import oci
from containerdisks.catalog import Catalog, Focus
from containerdisks.commands.context import Context, load_public_key, run_entries
from containerdisks.commands.render import write_table
from containerdisks.engine.results import (
    Result,
    ResultsError,
    failed_earlier,
    read_results,
    recorded_digest,
    write_results,
)
from containerdisks.registry.attach import check_image
from containerdisks.registry.stores import Connection, Place, open_places
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError, Settings
from containerdisks.signing import PublicKey, SigningError
from containerdisks.verify import flow, qemu
from containerdisks.verify.flow import Booter, Verdict
from containerdisks.verify.local import LocalBooter, LocalError, private_dir, remove_stale_work
from containerdisks.verify.ssh import SshCheck
from containerdisks.verify.target import Failed, Skipped, Target, select_targets
from containerdisks.workdir import own_work_dir

__all__ = ["render", "run", "verify_all"]

log = structlog.get_logger(__name__)


async def _with_digest(place: Place, target: Target) -> Target | Verdict:
    """The target with the digest to boot: the recorded one, else what `Tags[0]` names now."""
    if target.digest:
        return target
    repo = place.repo(target.name)
    where = f"{place.store.host}/{repo}:{target.first_tag}"
    try:
        digest = await recorded_digest(target.result, place.store, repo)
    except oci.OCIError as e:
        digest, why = None, str(e)
    else:
        why = "not found"
    if digest is None:
        message = f"{target.key}: {where}: {why}"
        result = target.result.after("verify", message)
        return Verdict(target.key, target.arch, "failed", f"{where}: {why}", result=result)
    return Target(**{**target.__dict__, "digest": digest})


async def _signed(place: Place, target: Target, key: PublicKey | None) -> Target | Verdict:
    """`target` with its digest, when no key is given or its signature and provenance check
    with `key`; otherwise the failed verdict (one line), and nothing is booted."""
    got = await _with_digest(place, target)
    if key is None or isinstance(got, Verdict):
        return got
    repo = place.repo(target.name)
    try:
        top = await place.store.get_manifest(repo, got.digest)
        await check_image(place.store, repo, top, key)
    except (SigningError, oci.OCIError) as e:
        why = f"not signed with {key.name}: {e}"
        result = target.result.after("verify", f"{target.key}: {why}")
        return Verdict(target.key, target.arch, "failed", why, result=result)
    return got


async def _checked(
    settings: Settings,
    chosen: Sequence[Target | Skipped | Failed],
    key: PublicKey | None,
    place: Place,
) -> tuple[list[Target | Skipped | Failed], list[Verdict]]:
    """The targets that may boot, and the verdicts of those that may not."""
    ready: list[Target | Skipped | Failed] = []
    failed: list[Verdict] = []
    for c in chosen:
        if isinstance(c, Target) and not settings.dry_run:
            got = await _signed(place, c, key)
            if isinstance(got, Verdict):
                failed.append(got)
            else:
                ready.append(got)
        else:
            ready.append(c)
    return ready, failed


async def run(ctx: Context) -> int:
    settings = ctx.settings
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
    catalog = ctx.catalog
    focus = ctx.focus
    if focus.given:
        catalog.select(focus)  # a focus that names no catalog entry is a usage error
    if settings.verify_local:
        verdicts = await _run_local(settings, results, catalog, focus)
    else:
        verdicts = await _run_kube(settings, results, catalog, focus)
    order = {key: i for i, key in enumerate(results)}
    verdicts.sort(key=lambda v: order.get(v.key, len(order)))
    render(verdicts, ctx)
    if failed := failed_earlier(results, (v.key for v in verdicts)):
        log.error(
            "failed_in_earlier_stage", entries=", ".join(failed), exit_status="1 unless --no-fail"
        )
    broken = False
    if not settings.dry_run:
        updated = dict(results)
        for v in verdicts:
            if v.result is not None:
                updated[v.key] = v.result
        try:
            write_results(Path(settings.results_file), updated)
        except ResultsError as e:
            log.error("results_not_written", error=str(e))
            broken = True
    return ctx.exit_status(any(v.status == "failed" for v in verdicts), broken=broken)


async def verify_all(
    chosen: Sequence[Target | Skipped | Failed],
    booter: Booter,
    check: SshCheck,
    *,
    workers: int,
    dry_run: bool,
) -> list[Verdict]:
    """One verdict per chosen target or skip, in order; the boots `workers` at once."""
    triaged = [flow.triage(c, booter, dry_run=dry_run) for c in chosen]
    todo = [t for t in triaged if isinstance(t, Target)]

    async def one(target: Target) -> Verdict:
        return await flow.verify(target, booter, check)

    booted = iter(await run_entries(todo, one, workers=workers))
    return [next(booted) if isinstance(t, Target) else t for t in triaged]


def render(verdicts: Sequence[Verdict], ctx: Context) -> None:
    """ENTRY, ARCH, RESULT: `verified in 8.4 s`, `failed: <why>`, `skipped: <why>`, or the
    dry run's `would boot (...)`."""
    rows = [("ENTRY", "ARCH", "RESULT")]
    for v in verdicts:
        if v.status == "verified":
            text = f"verified in {v.seconds:.1f} s"
            if v.detail != flow.LOGGED_IN:  # how, when it was not the SSH login
                text += f": {v.detail}"
        elif v.status == "planned":
            text = v.detail
        else:
            text = f"{v.status}: {v.detail}"
        rows.append((v.key, v.arch, text))
    write_table(rows, ctx.out)


def _choose(
    results: dict[str, Result], catalog: Catalog, focus: Focus, goarch: str
) -> tuple[list[Target | Skipped | Failed], list[Verdict]]:
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
                result=prior.after("verify", message),
            )
        )
    return chosen, verdicts


async def _run_kube(
    settings: Settings, results: dict[str, Result], catalog: Catalog, focus: Focus
) -> list[Verdict]:
    """In KubeVirt: the image is `<--registry>/<Tags[0]>` as the cluster pulls it (medius).

    The Kubernetes client is imported here, not at the top: `--local` never loads it.
    """
    from kubernetes_asyncio import client as kclient  # noqa: PLC0415

    from containerdisks.verify import kube  # noqa: PLC0415

    try:
        cfg = await kube.load_config(settings.kubeconfig, settings.kube_master)
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
        key = load_public_key(settings.verify_key)
        if key is not None:  # read the registry the cluster pulls from, before any VM
            backoff = RetryPolicy.for_registry(settings.retries)
            spec = settings.verify_registry
            async with open_places(spec, spec, Connection.of(settings), backoff) as (place, _):
                chosen, refused = await _checked(settings, chosen, key, place)
            verdicts += refused
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
    try:
        account = qemu.qemu_account(settings.verify_qemu_user)
    except qemu.QemuError as e:
        raise ConfigError(f"images verify: {e}") from None
    async with open_places(registry, registry, Connection.of(settings), backoff) as (place, _):
        if not settings.dry_run:
            remove_stale_work(settings.work_dir)
            kept = settings.work_dir / "serial-logs"
            try:
                if kept.exists() or kept.is_symlink():
                    private_dir(kept)  # an older version's 0755 is fixed now, not at a failure
            except LocalError as e:
                raise ConfigError(f"images verify: {e}") from None
        key = load_public_key(settings.verify_key)
        ready, refused = await _checked(settings, chosen, key, place)
        verdicts += refused
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
