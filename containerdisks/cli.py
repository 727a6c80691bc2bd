"""The command line: medius's grammar on argparse, and the call of the command it names.

pflag-style booleans (`--flag`, `--flag=true`, `--flag=false`) are had by rewriting a bare
boolean flag to `--flag=true` before argparse sees it, so a boolean never swallows the next word
(`--dry-run images push` works, `--dry-run false` is an error, as in pflag). Global flags are
accepted before and after the subcommand: both parsers know them, with suppressed defaults so
that only flags actually given reach the settings layer.

Each command is a typed `run(ctx) -> int` in `containerdisks.commands`, called directly and
imported only when it runs; `--help` and `--version` import none of them, nor the settings, nor
asyncio (tests/test_startup.py pins what they import).
Exit statuses (docs/cli.md, decided in commands/context.py): 0 all good; 1 some entry failed (0
with `--no-fail`); 2 usage or configuration error (one line on stderr, no traceback); 130 / 143
when SIGINT / SIGTERM ended the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from containerdisks import __version__

if TYPE_CHECKING:
    from containerdisks.commands.context import Context

__all__ = ["main"]

_BOOL_FLAGS = ("--dry-run", "--insecure-skip-tls", "--force", "--no-fail", "--once", "--local")
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
        raise UsageError(message)


def _global_flags(where: str) -> _Parser:
    p = _Parser(add_help=False, allow_abbrev=False)
    s = argparse.SUPPRESS
    p.add_argument(
        "--dry-run",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="don't publish anything (default true)",
    )
    p.add_argument("--focus", default=s, help="only this entry: name:version or name:*")
    p.add_argument(
        "--insecure-skip-tls",
        type=_bool,
        default=s,
        metavar="BOOL",
        help="skip registry TLS verification; allow plain HTTP for any host",
    )
    p.add_argument("--config", default=s, help="YAML config file (settings and catalog)")
    p.add_argument(
        "--upstream-mirror",
        action="append",
        default=s,
        dest=f"mirrors_{where}",
        metavar="FROM=TO",
        help="rewrite upstream URLs starting with FROM (repeatable)",
    )
    p.add_argument("--ca-file", default=s, help="extra CA bundle for registries")
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
    p.add_argument("--log-level", default=s, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default=s, choices=["auto", "json", "console"])
    return p


def _push_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `images push`, which `serve` shares (one sync core, one set of flags)."""
    s = argparse.SUPPRESS
    p.add_argument("--results-file", default=s, help="results file (default results.json)")
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
    _keep_flag(p)


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


def _command(
    parent: Any,  # argparse's _SubParsersAction, private in typeshed
    name: str,
    handler: str,
    *flags: Callable[[argparse.ArgumentParser], None],
    help: str,
) -> argparse.ArgumentParser:
    """A subcommand with the global flags, its own `flags`, and the handler it runs."""
    p: argparse.ArgumentParser = parent.add_parser(
        name, parents=[_global_flags("sub")], allow_abbrev=False, help=help
    )
    for add in flags:
        add(p)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="containerdisks",
        parents=[_global_flags("root")],
        allow_abbrev=False,
        description="Keep a registry full of up-to-date KubeVirt containerdisks.",
    )
    root.add_argument("--version", action="version", version=f"containerdisks {__version__}")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    images = commands.add_parser(
        "images", help="publish containerdisks", parents=[_global_flags("sub")], allow_abbrev=False
    )
    image_cmds = images.add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser
    )
    _command(
        image_cmds, "push", "images_push", _push_flags,
        help="determine which containerdisks need an update and push them",
    )  # fmt: skip
    _command(
        image_cmds, "prune", "images_prune", _prune_flags,
        help="delete the older <version>-<YYMMDDhhmm> tags, keeping the newest N per entry",
    )  # fmt: skip
    _command(
        image_cmds, "verify", "images_verify", _verify_flags,
        help="boot each pushed containerdisk and log in over SSH",
    )  # fmt: skip
    _command(
        image_cmds, "promote", "images_promote", _promote_flags,
        help="copy every verified containerdisk, by its verified digest, to the target registry",
    )  # fmt: skip
    _command(
        commands, "serve", "serve", _push_flags, _serve_flags,
        help="keep the registry current: a pass now and every --interval, with health and metrics",
    )  # fmt: skip
    catalog = _command(
        commands, "catalog", "catalog",
        help="list the catalog: entries, arches, sources and tag policy (no network)",
    )  # fmt: skip
    catalog.add_argument("--output", default=argparse.SUPPRESS, choices=["table", "json"])

    docs = commands.add_parser(
        "docs", help="repository descriptions", parents=[_global_flags("sub")], allow_abbrev=False
    )
    docs_cmds = docs.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    _command(
        docs_cmds, "publish", "docs_publish", _docs_flags,
        help="synchronize the containerdisk descriptions with quay.io",
    )  # fmt: skip
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


def _normalise(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        out.append(f"{arg}=true" if arg in _BOOL_FLAGS else arg)
    return out


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], dict[str, str], str | None]:
    """Return (handler, settings flags, mirror flags, config path)."""
    args = vars(build_parser().parse_args(_normalise(argv)))
    handler = args.pop("handler", None)
    if handler is None:
        missing = "SUBCOMMAND" if args.get("command") else "COMMAND"
        raise UsageError(f"a {missing} is required (see --help)")
    args.pop("command", None)
    args.pop("subcommand", None)
    config = args.pop("config", None)
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
    if command == "serve":
        from containerdisks.commands import serve

        return await serve.run(ctx)
    if command == "catalog":
        from containerdisks.commands import catalog

        return await catalog.run(ctx)
    if command == "docs_publish":
        from containerdisks.commands import docs

        return await docs.run(ctx)
    raise AssertionError(f"no command {command!r}")  # the parser names only the above


def _run(command: str, ctx: Context) -> int:
    """Run a command on a fresh event loop; SIGINT/SIGTERM cancel it and give 130/143."""
    import asyncio  # not at the top: `--help` never starts a loop (start-up time)
    import signal

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
        try:
            return await _dispatch(command, ctx)
        except asyncio.CancelledError:
            if got:
                return got[0]
            raise

    return asyncio.run(runner())


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
        settings = load_settings(flags, config, file_name=config_name, extra_mirrors=mirrors)
        log.configure(settings.log_level, settings.log_format)
        return _run(command, Context(settings, config, config_name, sys.stdout))
    except (UsageError, ConfigError) as e:
        return _usage_error(e)
    except KeyboardInterrupt:
        return EXIT_SIGINT


def entrypoint() -> NoReturn:
    sys.exit(main())
