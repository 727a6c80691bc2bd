"""The command line: medius's grammar on argparse, and the call of the command it names.

pflag-style booleans (`--flag`, `--flag=true`, `--flag=false`) are had by rewriting a bare
boolean flag to `--flag=true` before argparse sees it, so a boolean never swallows the next word
(`--dry-run images push` works, `--dry-run false` is an error, as in pflag). Global flags are
accepted before and after the subcommand, with suppressed defaults so that only flags actually
given reach the settings layer; but each command takes only the groups of them it reads
(`GROUPS_OF`): its parser has only those, and one given before it that it does not take is a
usage error naming the command. Each command's `--help` (`HELP`) has a description, examples
and its exit statuses. `--focus` may be given several times: the values are joined with
commas, the union `catalog.Focus` parses.

Each command is a typed `run(ctx) -> int` in `containerdisks.commands`, called directly and
imported only when it runs; `--help` and `--version` import none of them, nor the settings, nor
asyncio (tests/test_startup.py pins what they import).
Exit statuses (docs/cli.md, decided in commands/context.py): 0 all good; 1 some entry failed (0
with `--no-fail`); 2 usage or configuration error (one line on stderr, no traceback); 3 a dry run
with `--exit-code` that would publish; 130 / 143 when SIGINT / SIGTERM ended the run.

Start-up and the cyclic garbage collector: importing the commands' modules (aiohttp, pydantic
and our models) allocates a few hundred thousand objects that live as long as the process, and
the collector ran ~140 times over them, a gen-2 pass included: ~15 % of the CPU of a one-shot
no-change `images push`. `entrypoint` (the console script, `python -m containerdisks`) turns
the collector off; when the command first waits on the event loop, start-up's objects are frozen
(`gc.freeze`: later collections skip them) and the collector is on again, for the daemon as for
the rest of the command. The freeze happens once: cyclic garbage made before it (made once,
bounded) is never collected, nothing made later is frozen, so `serve` leaks nothing over time.
`main()` called in-process leaves the collector alone.

The allocator (glibc): by default it gives freed memory at the top of a heap back to the kernel
as soon as more than twice its moving mmap threshold (a few MiB here) is free, and serves big
blocks with fresh mappings. A stream's allocations (256 KiB TLS reads, 1 MiB chunks joined by
aiohttp, compressed blocks made on the compressing thread and freed on the event loop's) rise and
fall by more than that every few MiB, so the same pages went back to the kernel and were faulted
in again: ~150,000 minor page faults and ~0.6 s of system CPU per GiB pushed. A command run by
`entrypoint` therefore fixes both thresholds (`_keep_freed_memory`: trim only past 32 MiB free,
map only blocks over 16 MiB): ~17,000 faults per GiB, a few MiB more peak RSS (benchmarks/
README.md). Elsewhere (musl, macOS) nothing is changed, nor where the operator set glibc's own
`MALLOC_*_` variables or `glibc.malloc.*` tunables. `--help` and `--version` never get here.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap  # argparse loads it anyway
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TextIO, cast

from containerdisks import __version__

if TYPE_CHECKING:
    from containerdisks.commands.context import Context

__all__ = ["main"]

_gc_deferred: list[bool] = []  # [True]: `entrypoint` turned the collector off (docstring)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"}

_BOOL_FLAGS = (
    "--dry-run",
    "--insecure-skip-tls",
    "--force",
    "--no-fail",
    "--once",
    "--local",
    "--exit-code",
)
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}


class UsageError(Exception):
    pass


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r} (use true or false)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message + self._suggestion(message))

    def _suggestion(self, message: str) -> str:
        """` (did you mean --dry-run?)` for a mistyped flag: argparse suggests only from 3.14
        (suggest_on_error), and only for choices; difflib over this parser's own flags."""
        import difflib  # only on an error: start-up time

        unknown = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", message.partition(":")[2])
        flags = sorted(_flags_of(self))
        for word in unknown:
            close = difflib.get_close_matches(word.partition("=")[0], flags, n=1, cutoff=0.6)
            if close:
                return f" (did you mean {close[0]}?)"
        return ""


def _common_flags(p: argparse.ArgumentParser, where: str) -> None:
    """What every command reads: its settings file and its logging."""
    s = argparse.SUPPRESS
    p.add_argument("--config", default=s, help="YAML config file (settings and catalog)")
    p.add_argument("--log-level", default=s, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default=s, choices=["auto", "json", "console"])


def _focus_flag(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--focus",
        action="append",
        default=argparse.SUPPRESS,
        dest=f"focus_{where}",
        metavar="NAME:VERSION",
        help="only these entries: name:version or name:*; several comma-separated or the flag "
        "repeated (their union)",
    )


def _dry_run_flag(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--dry-run",
        type=_bool,
        default=argparse.SUPPRESS,
        metavar="BOOL",
        help="don't publish anything (default true)",
    )


def _ca_flag(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--ca-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="extra CA bundle for registries and Quay",
    )


def _registry_flags(p: argparse.ArgumentParser, where: str) -> None:
    """How a registry is reached: TLS and credentials."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--insecure-skip-tls",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="skip registry TLS verification; allow plain HTTP for any host",
    )
    _ca_flag(p, where)
    p.add_argument(
        "--authfile",
        dest="auth_file",
        default=s,
        metavar="FILE",
        help="registry credentials (containers-auth.json) searched first, instead of "
        "$REGISTRY_AUTH_FILE; then ${XDG_RUNTIME_DIR}/containers/auth.json (else "
        "/run/containers/$UID/auth.json), ~/.config/containers/auth.json, "
        "$DOCKER_CONFIG/config.json (else ~/.docker/config.json)",
    )


def _mirror_flag(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--upstream-mirror",
        action="append",
        default=argparse.SUPPRESS,
        dest=f"mirrors_{where}",
        metavar="FROM=TO",
        help="rewrite upstream URLs starting with FROM (repeatable)",
    )


_Adder = Callable[[argparse.ArgumentParser, str], None]

#: The flag groups a command may also take before its subcommand (the "global" flags), by what
#: the command reads: `catalog` asks no registry, `results merge` no upstream, and so on.
_FLAG_GROUPS: dict[str, _Adder] = {
    "focus": _focus_flag,
    "dry-run": _dry_run_flag,
    "registry": _registry_flags,
    "ca": _ca_flag,
    "upstream": _mirror_flag,
}
_PUBLISHES = ("focus", "dry-run", "registry", "upstream")
#: Per command: the groups above that apply to it (`--config` and logging apply to every one).
GROUPS_OF: dict[str, tuple[str, ...]] = {
    "images_push": _PUBLISHES,
    "serve": _PUBLISHES,
    "images_prune": ("focus", "dry-run", "registry"),
    "images_verify": ("focus", "dry-run", "registry"),
    "images_promote": ("focus", "dry-run", "registry"),
    "images_verify_signatures": ("focus", "registry"),
    "catalog": ("focus",),
    "results_merge": (),
    "docs_publish": ("focus", "dry-run", "ca", "upstream"),
}


def _global_flags() -> _Parser:
    """The root's flags: every group, for whichever command follows (checked in `parse`)."""
    p = _Parser(add_help=False, allow_abbrev=False)
    _common_flags(p, "root")
    for name, add in _FLAG_GROUPS.items():
        if name != "ca":  # in "registry"
            add(p, "root")
    return p


def _push_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `images push`, which `serve` shares (one sync core, one set of flags)."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--results-file",
        default=s,
        help="results file (default results.json; with --shard I/N results-I-of-N.json)",
    )
    p.add_argument(
        "--shard",
        default=s,
        metavar="I/N",
        help="publish only shard I (from 0) of N, a fixed part of the catalog balanced by arches "
        "(default in an Indexed Job: $JOB_COMPLETION_INDEX/$CONTAINERDISKS_SHARD_COUNT)",
    )
    p.add_argument("--workers", type=int, default=s, help="entries processed in parallel")
    p.add_argument(
        "--force",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="rebuild every arch of the focused entries",
    )
    p.add_argument(
        "--no-fail", type=_bool, default=s, metavar="BOOL", help="exit 0 even if an entry failed"
    )
    p.add_argument(
        "--exit-code",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="dry run: exit 3 when something would be published, 0 when nothing would",
    )
    p.add_argument(
        "--source-registry",
        default=s,
        help="registry read to decide what is needed (default quay.io/containerdisks)",
    )
    p.add_argument(
        "--target-registry", default=s, help="registry to push to (default: the source registry)"
    )
    p.add_argument("--media-types", default=s, choices=["docker", "oci"])
    p.add_argument("--layer-compression", default=s, choices=["gzip", "zstd", "none"])
    p.add_argument("--work-dir", default=s, help="directory for spooled downloads")
    p.add_argument("--output", default=s, choices=["table", "json"])
    p.add_argument(
        "--sign-key",
        default=s,
        metavar="FILE",
        help="ECDSA P-256 private key (PKCS#8 PEM) that signs and attests what is published "
        "(passphrase: $CONTAINERDISKS_SIGN_KEY_PASSPHRASE)",
    )
    _keep_flag(p)


def _verify_key_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--verify-key", default=argparse.SUPPRESS, metavar="FILE", help=what)


def _keep_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-timestamp-tags",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="keep the newest N <version>-<YYMMDDhhmm> tags per entry (0: keep all)",
    )


def _prune_flags(p: argparse.ArgumentParser) -> None:
    """`images prune`: the registry flags of `images push`, and retention's own."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--source-registry",
        default=s,
        help="registry whose repositories are pruned unless --target-registry is given "
        "(default quay.io/containerdisks)",
    )
    p.add_argument("--target-registry", default=s, help="registry to prune")
    _keep_flag(p)
    p.add_argument(
        "--no-fail", type=_bool, default=s, metavar="BOOL", help="exit 0 even if an entry failed"
    )
    p.add_argument("--output", default=s, choices=["table", "json"])


def _serve_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--once", type=_bool, default=s, metavar="BOOL", help="run one pass, then exit")
    p.add_argument("--interval", type=float, default=s, help="seconds between passes")
    p.add_argument("--queue-size", type=int, default=s, help="entries waiting for a worker")
    p.add_argument("--listen", default=s, metavar="HOST:PORT", help="health/metrics server address")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=s,
        help="seconds in-flight syncs get after SIGTERM/SIGINT",
    )
    p.add_argument(
        "--leader-elect",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="publish only while holding the Kubernetes Lease (other replicas idle)",
    )
    p.add_argument(
        "--shards", type=int, default=s, help="shards shared by replicas through Leases (0: none)"
    )
    p.add_argument("--lease-name", default=s, help="Lease name (prefix with --shards)")
    p.add_argument("--lease-namespace", default=s, help="Leases' namespace (default: the pod's)")
    p.add_argument("--lease-duration", type=float, default=s, help="seconds (default 15)")
    p.add_argument("--lease-renew-deadline", type=float, default=s, help="seconds (default 10)")
    p.add_argument("--lease-retry-period", type=float, default=s, help="seconds (default 2)")
    p.add_argument("--kubeconfig", default=s, help="kubeconfig for the Leases")


def _verify_flags(p: argparse.ArgumentParser) -> None:
    """medius's `images verify` flags, and those of the local boot."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--registry",
        dest="verify_registry",
        default=s,
        metavar="HOST/NAMESPACE",
        help="registry holding the pushed images (default for --local: the target registry)",
    )
    p.add_argument(
        "--local",
        dest="verify_local",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="boot under qemu on this host instead of in KubeVirt",
    )
    p.add_argument(
        "--timeout",
        dest="verify_timeout",
        type=float,
        default=s,
        metavar="SECONDS",
        help="seconds from power-on to SSH login (default 600)",
    )
    p.add_argument(
        "--target-architecture",
        default=s,
        metavar="ARCH",
        help="amd64, arm64 or s390x (default: the first node's; --local: this host's)",
    )
    p.add_argument(
        "--namespace",
        dest="verify_namespace",
        default=s,
        help="namespace for the verify VMs (default kubevirt)",
    )
    p.add_argument(
        "--kubeconfig",
        default=s,
        metavar="FILE",
        help="kubeconfig file; default: the files $KUBECONFIG names, else ~/.kube/config, "
        "else the in-cluster service account",
    )
    p.add_argument(
        "--master",
        dest="kube_master",
        default=s,
        metavar="URL",
        help="Kubernetes API server address; overrides the kubeconfig's server (medius)",
    )
    p.add_argument("--firmware", dest="verify_firmware", default=s, choices=["uefi", "bios"])
    p.add_argument("--accel", dest="verify_accel", default=s, choices=["auto", "kvm", "tcg"])
    p.add_argument("--results-file", default=s, help="results file (default results.json)")
    p.add_argument("--workers", type=int, default=s, help="entries verified in parallel")
    p.add_argument(
        "--no-fail", type=_bool, default=s, metavar="BOOL", help="exit 0 even if an entry failed"
    )
    p.add_argument("--work-dir", default=s, help="directory for pulled disks and serial logs")
    _verify_key_flag(p, "public key (PEM): check signature and provenance before booting")


def _verify_signatures_flags(p: argparse.ArgumentParser) -> None:
    """`images verify-signatures`: a published registry, checked alone, for users."""
    p.add_argument(
        "--registry",
        dest="promote_registry",
        default=argparse.SUPPRESS,
        metavar="HOST/NAMESPACE",
        help="registry whose repositories are checked (default quay.io/containerdisks)",
    )
    _verify_key_flag(p, "public key (PEM) the images must be signed with (required)")
    p.add_argument("--output", default=argparse.SUPPRESS, choices=["table", "json"])


def _promote_flags(p: argparse.ArgumentParser) -> None:
    """medius's `images promote` flags, and `--no-fail` / `--workers` as verify has them."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--source-registry",
        required=True,
        default=s,
        metavar="HOST/NAMESPACE",
        help="registry holding the verified images (required)",
    )
    p.add_argument(
        "--target-registry",
        dest="promote_registry",
        default=s,
        metavar="HOST/NAMESPACE",
        help="registry to promote to (default quay.io/containerdisks; never the "
        "target_registry setting, which is where push writes)",
    )
    p.add_argument("--results-file", default=s, help="results file (default results.json)")
    p.add_argument("--workers", type=int, default=s, help="entries promoted in parallel")
    p.add_argument(
        "--no-fail", type=_bool, default=s, metavar="BOOL", help="exit 0 even if an entry failed"
    )
    _verify_key_flag(p, "public key (PEM): promote only images signed and attested with it")


class _Help(NamedTuple):
    """A command's `--help`: one line for its group's list, what it does, examples, exits
    (a NamedTuple, not a dataclass: `--help` stays short of `inspect`)."""

    summary: str
    description: str
    examples: tuple[str, ...]
    #: (status, meaning), in order; 2 and the signals are added to every command's.
    exits: tuple[tuple[str, str], ...]

    def epilog(self) -> str:
        exits = [*self.exits, ("2", "usage or configuration error (one line on stderr)")]
        if not any(code == "130/143" for code, _ in exits):
            exits.append(("130/143", "SIGINT / SIGTERM ended the run"))
        lines = ["examples:", *(f"  {e}" for e in self.examples), "", "exit status:"]
        lines += [f"  {code:<8} {meaning}" for code, meaning in sorted(exits, key=_status_order)]
        return "\n".join(lines)


def _status_order(exit: tuple[str, str]) -> int:
    return int(exit[0].partition("/")[0])


_NO_FAIL = " (0 with --no-fail)"
#: Every command's help, by handler (a test walks the parser and checks each has one).
HELP: dict[str, _Help] = {
    "images_push": _Help(
        "determine which containerdisks need an update and push them",
        "Discover every focused catalog entry upstream, compare it with what the source "
        "registry has published and print the plan. With --dry-run=false, build and push "
        "what is needed to the target registry, write the results file and print the outcome.",
        (
            "containerdisks images push --focus 'fedora:*'",
            "containerdisks images push --focus centos-stream:9,debian:12 --output json",
            "containerdisks images push --dry-run=false "
            "--target-registry localhost:5000/containerdisks --results-file results.json",
            "containerdisks images push --exit-code    # CI: exit 3 when a publish is pending",
        ),
        (
            ("0", "every entry planned, published or up to date"),
            ("1", "an entry failed" + _NO_FAIL),
            ("3", "dry run with --exit-code: something would be published"),
        ),
    ),
    "serve": _Help(
        "keep the registry current: a pass now and every --interval, with health and metrics",
        "The daemon: a pass of `images push` now and every --interval seconds, /healthz, "
        "/readyz, /metrics and /status on --listen, a pass now on SIGHUP and a graceful drain "
        "on SIGTERM. With --once, one pass with the exit statuses of `images push`.",
        (
            "containerdisks serve --dry-run=false "
            "--target-registry registry.example.org/containerdisks --interval 3600",
            "containerdisks serve --once --dry-run=false --focus 'fedora:*'",
            "containerdisks serve --once --exit-code",
        ),
        (
            ("0", "drained after SIGTERM; --once: as images push"),
            ("1", "--once: an entry failed" + _NO_FAIL),
            ("3", "--once dry run with --exit-code: something would be published"),
            ("130/143", "a second SIGINT / SIGTERM during the drain"),
        ),
    ),
    "images_prune": _Help(
        "delete the older <version>-<YYMMDDhhmm> tags, keeping the newest N per entry",
        "Delete the older <version>-<YYMMDDhhmm> tags of each focused entry in the target "
        "registry, keeping the newest --keep-timestamp-tags N (0 keeps all). A dry run prints "
        "what it would delete; no upstream is asked.",
        (
            "containerdisks images prune --keep-timestamp-tags 5",
            "containerdisks images prune --target-registry quay.io/containerdisks "
            "--keep-timestamp-tags 5 --dry-run=false",
        ),
        (
            ("0", "pruned (or would prune), or the registry refuses deletes"),
            ("1", "an entry's tags could not be read or deleted" + _NO_FAIL),
        ),
    ),
    "images_verify": _Help(
        "boot each pushed containerdisk and log in over SSH",
        "Boot each containerdisk the results file records at stage push, in KubeVirt "
        "(--registry) or under qemu on this host (--local), and log in over SSH; its record "
        "moves to stage verify. A dry run says what it would boot.",
        (
            "containerdisks images verify --local --dry-run=false --results-file results.json",
            "containerdisks images verify --registry registry.example.org/containerdisks "
            "--kubeconfig ~/.kube/config --dry-run=false",
            "containerdisks images --results-file results.json verify --local --focus fedora:42",
        ),
        (
            ("0", "every selected entry booted and logged in (or would be booted)"),
            ("1", "an entry failed, here or in an earlier stage" + _NO_FAIL),
        ),
    ),
    "images_promote": _Help(
        "copy every verified containerdisk, by its verified digest, to the target registry",
        "Copy every containerdisk verify passed, by the digest it verified, from "
        "--source-registry to --target-registry, then move its tags; its record moves to "
        "stage promote. A dry run checks the staging tags and copies nothing.",
        (
            "containerdisks images promote --source-registry staging.example.org/containerdisks "
            "--dry-run=false",
            "containerdisks images promote --source-registry oci:/srv/staging "
            "--target-registry oci:/srv/public --focus 'fedora:*'",
        ),
        (
            ("0", "every eligible entry promoted (or would be)"),
            ("1", "an entry failed, here or in an earlier stage" + _NO_FAIL),
        ),
    ),
    "images_verify_signatures": _Help(
        "check that every image of the registry's repositories is signed and attested",
        "Check that every tagged image of the catalog's repositories under --registry, and "
        "each of its arches, is signed and attested with --verify-key: one row per digest.",
        (
            "containerdisks images verify-signatures --verify-key cosign.pub",
            "containerdisks images verify-signatures --verify-key cosign.pub "
            "--registry localhost:5000/containerdisks --focus 'fedora:*' --output json",
        ),
        (
            ("0", "every digest is signed and verifies"),
            ("1", "a digest is unsigned or does not verify"),
        ),
    ),
    "catalog": _Help(
        "list the catalog: entries, arches, sources and tag policy (no network)",
        "List the catalog in effect (the default one, or --config's): entries, arches, "
        "sources and their parameters, env, users and tag policy. Nothing is asked over the "
        "network.",
        (
            "containerdisks catalog",
            "containerdisks catalog --focus 'debian:*,cirros:6.1' --output json",
            "containerdisks catalog --config airgap.yaml --focus centos-stream:9",
        ),
        (("0", "listed"),),
    ),
    "results_merge": _Help(
        "merge the results files of sharded pushes into one for verify and promote",
        "Join the results files of sharded pushes into one (--results-file) for one "
        "`images verify` and one `images promote`. It writes under the default --dry-run "
        "too: it publishes nothing.",
        (
            "containerdisks results merge results-0-of-2.json results-1-of-2.json "
            "--results-file results.json",
        ),
        (
            ("0", "merged"),
            ("1", "the merged file could not be written"),
        ),
    ),
    "docs_publish": _Help(
        "synchronize the containerdisk descriptions with quay.io",
        "Write each focused repository's description on Quay and make it public, as medius "
        "does. A dry run prints each page and sends nothing.",
        (
            "containerdisks docs publish --focus 'fedora:*'",
            "containerdisks docs publish --dry-run=false --quay-token-file /secrets/quay-token",
        ),
        (
            ("0", "every page written (or printed)"),
            ("1", "a repository's Quay request or discovery failed"),
        ),
    ),
}


def _command(
    parent: Any,  # argparse's _SubParsersAction, private in typeshed
    name: str,
    handler: str,
    *flags: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """A subcommand with its help, the global flags that apply to it (`GROUPS_OF`), its own
    `flags`, and the handler it runs."""
    doc = HELP[handler]
    p: argparse.ArgumentParser = parent.add_parser(
        name,
        allow_abbrev=False,
        help=doc.summary,
        description=textwrap.fill(doc.description, 79),
        epilog=doc.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_flags(p, "sub")
    for group in GROUPS_OF[handler]:
        _FLAG_GROUPS[group](p, "sub")
    for add in flags:
        add(p)
    accepts = frozenset(a.dest for a in p._actions)
    own = frozenset(o for a in p._actions for o in a.option_strings if o.startswith("--"))
    p.set_defaults(handler=handler, accepts=accepts, flags=own)
    return p


def _group(parent: Any, name: str, summary: str) -> Any:
    """A group of subcommands (`images`, `results`, `docs`); its subcommands' flags may stand
    before the subcommand (`_GROUPS`)."""
    p = parent.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}. A subcommand's flags may also stand "
        f"before it ({name} --help lists the subcommands; {name} SUBCOMMAND --help, its flags).",
        allow_abbrev=False,
    )
    return p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)


def _output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=argparse.SUPPRESS, choices=["table", "json"])


def _merge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "results_inputs", nargs="+", metavar="FILE", help="results files to merge (each once)"
    )
    p.add_argument(
        "--results-file", default=argparse.SUPPRESS, help="merged file (default results.json)"
    )
    _output_flag(p)


def build_parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="containerdisks",
        parents=[_global_flags()],
        allow_abbrev=False,
        description="Keep a registry full of up-to-date KubeVirt containerdisks. The flags "
        "below may also stand before the command, where they apply to it (COMMAND --help "
        "lists the flags of each).",
        epilog="examples:\n  containerdisks catalog\n  containerdisks images push --focus "
        "'fedora:*'\n  containerdisks images push --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"containerdisks {__version__}")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    image_cmds = _group(commands, "images", "publish, verify, promote and prune containerdisks")
    _command(image_cmds, "push", "images_push", _push_flags)
    _command(image_cmds, "prune", "images_prune", _prune_flags)
    _command(image_cmds, "verify", "images_verify", _verify_flags)
    _command(image_cmds, "promote", "images_promote", _promote_flags)
    _command(image_cmds, "verify-signatures", "images_verify_signatures", _verify_signatures_flags)
    _command(commands, "serve", "serve", _push_flags, _serve_flags)
    results_cmds = _group(commands, "results", "results files")
    _command(results_cmds, "merge", "results_merge", _merge_flags)
    _command(commands, "catalog", "catalog", _output_flag)
    docs_cmds = _group(commands, "docs", "repository descriptions")
    _command(docs_cmds, "publish", "docs_publish", _docs_flags)
    return root


def _docs_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument(
        "--registry",
        dest="docs_registry",
        metavar="quay.io/ORG",
        default=s,
        help="Quay namespace whose descriptions are written (default quay.io/containerdisks)",
    )
    p.add_argument("--quay-token-file", default=s, metavar="FILE", help="quay.io OAuth token file")
    p.add_argument(
        "--quay-api-url",
        default=s,
        metavar="URL",
        help="Quay API base URL (default https://quay.io)",
    )


def _flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """Every long flag of `parser` and its subcommands (argparse reports a flag it does not
    know from the root parser, which knows only the global ones)."""
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags_of(sub)
    return flags


#: Groups whose subcommand's flags medius also takes before the subcommand (cobra's persistent
#: flags: `images --workers 2 push`, `images --results-file F verify`).
_GROUPS = {
    "images": ("push", "prune", "verify", "promote", "verify-signatures"),
    "results": ("merge",),
    "docs": ("publish",),
}


def _normalise(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return _group_flags_after_subcommand(out) + list(argv[i:])
        out.append(f"{arg}=true" if arg in _BOOL_FLAGS else arg)
    return _group_flags_after_subcommand(out)


def _group_flags_after_subcommand(argv: list[str]) -> list[str]:
    """Move the flags standing between a group (`images`, `docs`) and its subcommand to just
    after the subcommand, where its parser knows them (every flag there applies to the
    subcommand, as medius's persistent flags do)."""
    for g, arg in enumerate(argv):
        if arg in _GROUPS:
            for s in range(g + 1, len(argv)):
                if argv[s] in _GROUPS[arg]:
                    return [*argv[: g + 1], argv[s], *argv[g + 1 : s], *argv[s + 1 :]]
                if not argv[s].startswith("-") and not argv[s - 1].startswith("-"):
                    break  # a word that is no flag's value: not a subcommand, let argparse say
            return argv
    return argv


def _flag_of(dest: str) -> str:
    """The flag the root parser stores in `dest`."""
    return next(a.option_strings[0] for a in build_parser()._actions if a.dest == dest)


def _unrecognized(extra: list[str], command: str, own: frozenset[str]) -> str:
    """`unrecognized arguments: ...` with the closest flag of this command (difflib), or for a
    flag of other commands, that it does not apply to this one."""
    message = "unrecognized arguments: " + " ".join(extra)
    everywhere = _flags_of(build_parser())
    for word in extra:
        flag = word.partition("=")[0]
        if not flag.startswith("--"):
            continue
        if flag in everywhere:
            return f"{flag} does not apply to {command} (see its --help)"
        import difflib  # only on an error: start-up time

        close = difflib.get_close_matches(flag, sorted(own), n=1, cutoff=0.6)
        if close:
            return f"{message} (did you mean {close[0]}?)"
    return message


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], dict[str, str], str | None]:
    """Return (handler, settings flags, mirror flags, config path)."""
    namespace, extra = build_parser().parse_known_args(_normalise(argv))
    args = vars(namespace)
    handler = args.pop("handler", None)
    command = " ".join(w for w in (args.pop("command", None), args.pop("subcommand", None)) if w)
    if handler is None:
        if extra:
            raise UsageError(_unrecognized(extra, command or "containerdisks", frozenset()))
        missing = "SUBCOMMAND" if command else "COMMAND"
        raise UsageError(f"a {missing} is required (see --help)")
    accepts, own_flags = args.pop("accepts"), args.pop("flags")
    if extra:
        raise UsageError(_unrecognized(extra, command, own_flags))
    for dest in args:
        if dest.replace("_root", "_sub") not in accepts:  # given before the command
            raise UsageError(f"{_flag_of(dest)} does not apply to {command} (see its --help)")
    config = args.pop("config", None)
    focus = args.pop("focus_root", []) + args.pop("focus_sub", [])
    if focus:  # the union of every --focus, before and after the subcommand (Focus parses it)
        args["focus"] = ",".join(focus)
    mirrors: dict[str, str] = {}
    for spec in args.pop("mirrors_root", []) + args.pop("mirrors_sub", []):
        from containerdisks.upstream import parse_mirror  # not for --help: it loads aiohttp

        try:
            src, dst = parse_mirror(spec)
        except ValueError as e:
            raise UsageError(f"invalid flag --upstream-mirror: {e}") from None
        mirrors[src] = dst
    return handler, args, mirrors, config


async def _dispatch(command: str, ctx: Context) -> int:
    """Run `command`'s `run(ctx)`; only its own module is imported (start-up stays short:
    `images promote` need not load asyncssh, `--help` loads none)."""
    if command == "images_push":
        from containerdisks.commands import push

        return await push.run(ctx)
    if command == "images_verify":
        from containerdisks.commands import verify

        return await verify.run(ctx)
    if command == "images_prune":
        from containerdisks.commands import prune

        return await prune.run(ctx)
    if command == "images_promote":
        from containerdisks.commands import promote

        return await promote.run(ctx)
    if command == "images_verify_signatures":
        from containerdisks.commands import signatures

        return await signatures.run(ctx)
    if command == "serve":
        from containerdisks.commands import serve

        return await serve.run(ctx)
    if command == "results_merge":
        from containerdisks.commands import results

        return await results.run(ctx)
    if command == "catalog":
        from containerdisks.commands import catalog

        return await catalog.run(ctx)
    if command == "docs_publish":
        from containerdisks.commands import docs

        return await docs.run(ctx)
    raise AssertionError(f"no command {command!r}")  # the parser names only the above


def _keep_freed_memory() -> None:
    """Fix glibc's trim and mmap thresholds for this process (see the docstring)."""
    if _ALLOCATOR_ENV & set(os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return  # the operator tuned the allocator: theirs wins
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_TRIM_THRESHOLD, 32 << 20)
    mallopt(_M_MMAP_THRESHOLD, 16 << 20)


def _run(command: str, ctx: Context) -> int:
    """Run a command on a fresh event loop; SIGINT/SIGTERM cancel it and give 130/143."""
    import asyncio  # not at the top: `--help` never starts a loop (start-up time)
    import signal

    if _gc_deferred:  # the process is ours (`entrypoint`), not a caller's of `main()`
        _keep_freed_memory()

    from containerdisks.commands.context import EXIT_SIGINT, EXIT_SIGTERM

    got: list[int] = []

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig, code in ((signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)):

            def on_signal(code: int = code) -> None:
                got.append(code)
                task.cancel()

            loop.add_signal_handler(sig, on_signal)
        loop.call_soon(_resume_gc)  # runs when the command first waits
        try:
            return await _dispatch(command, ctx)
        except asyncio.CancelledError:
            if got:
                return got[0]
            raise

    return asyncio.run(runner())


def _resume_gc() -> None:
    """Freeze what start-up made and turn the collector on again (see the docstring)."""
    if _gc_deferred:
        import gc

        _gc_deferred.clear()
        gc.freeze()
        gc.enable()


def _usage_error(e: Exception) -> int:
    from containerdisks.commands.context import EXIT_USAGE
    from containerdisks.oci.redact import redact

    print(redact(f"containerdisks: {e}"), file=sys.stderr)  # noqa: T201 - the one-line error
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; whatever it prints on stdout or stderr has its secrets masked.

    The flags are parsed first, with nothing of the commands imported: `--help` and
    `--version` end there (argparse exits), so they load neither aiohttp nor the settings."""
    try:
        parsed = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        return _usage_error(e)
    from containerdisks import log

    out, err = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, log.RedactingStream(out))
    sys.stderr = cast(TextIO, log.RedactingStream(err))
    try:
        return _main(*parsed)
    except Exception:
        # A bug: the traceback is printed while stderr still masks secrets (a registered
        # password in an exception's message would otherwise reach the terminal in clear).
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err


def _main(command: str, flags: dict[str, Any], mirrors: dict[str, str], path: str | None) -> int:
    from pathlib import Path

    from containerdisks import log
    from containerdisks.commands.context import EXIT_SIGINT, Context
    from containerdisks.settings import ConfigError, load_config_file, load_settings

    try:
        config_path = path or os.environ.get("CONTAINERDISKS_CONFIG") or None
        config: dict[str, Any] = {}
        config_name = "config file"
        if config_path:
            config = load_config_file(Path(config_path))
            config_name = f"config file {config_path}"
        operands = tuple(flags.pop("results_inputs", ()))  # `results merge FILE...`
        settings = load_settings(
            flags,
            config,
            file_name=config_name,
            extra_mirrors=mirrors,
            sharded=command in ("images_push", "serve"),  # the commands that publish a shard
        )
        log.configure(settings.log_level, settings.log_format)
        return _run(command, Context(settings, config, config_name, sys.stdout, operands))
    except (UsageError, ConfigError) as e:
        return _usage_error(e)
    except KeyboardInterrupt:
        return EXIT_SIGINT


def entrypoint() -> NoReturn:
    import gc

    gc.disable()  # until the command first waits: see the docstring
    _gc_deferred.append(True)
    sys.exit(main())
