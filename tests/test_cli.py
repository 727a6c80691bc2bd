"""The command line: pflag grammar, global flags anywhere, one-line errors and exit statuses.

Parsing is tested in-process; exit statuses and "no traceback" through real subprocesses of
`python -m containerdisks`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from containerdisks.cli import UsageError, parse
from tests.support.cli import clean_env


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["images", "push"], {}),
        (["images", "push", "--dry-run"], {"dry_run": True}),
        (["images", "push", "--dry-run=false"], {"dry_run": False}),
        (["--dry-run=false", "images", "push"], {"dry_run": False}),
        (["--dry-run", "images", "push"], {"dry_run": True}),
        (["images", "--focus", "fedora:40", "push"], {"focus": "fedora:40"}),
        (
            ["--insecure-skip-tls", "images", "push", "--force", "--no-fail=true"],
            {"insecure_skip_tls": True, "force": True, "no_fail": True},
        ),
        (
            ["images", "push", "--workers", "3", "--results-file=r.json"],
            {"workers": "3", "results_file": "r.json"},
        ),
        (
            ["images", "push", "--source-registry", "localhost:5000/x", "--target-registry=y.io/z"],
            {"source_registry": "localhost:5000/x", "target_registry": "y.io/z"},
        ),
    ],
)
def test_flags_parse_like_pflag(argv: list[str], expected: dict[str, object]) -> None:
    handler, flags, _, _ = parse(argv)
    assert "images_push" == handler
    assert expected == {k: v for k, v in flags.items() if k != "workers"} | (
        {"workers": str(flags["workers"])} if "workers" in flags else {}
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--dry-run=false", "docs", "publish", "--registry", "quay.io/x", "--quay-token-file=t"],
        ["docs", "--dry-run=false", "publish", "--registry=quay.io/x", "--quay-token-file", "t"],
        ["docs", "publish", "--quay-token-file", "t", "--registry", "quay.io/x", "--dry-run=false"],
    ],
)
def test_docs_publish_flags_with_global_flags_on_either_side(argv: list[str]) -> None:
    handler, flags, _, _ = parse(argv)
    assert "docs_publish" == handler
    assert {"dry_run": False, "docs_registry": "quay.io/x", "quay_token_file": "t"} == flags


def test_mirror_flags_before_and_after_the_subcommand_all_count() -> None:
    _, _, mirrors, config = parse(
        [
            "--upstream-mirror",
            "https://a/=http://m/a/",
            "--config",
            "c.yaml",
            "images",
            "push",
            "--upstream-mirror=https://b/=http://m/b/?x=1",
        ]
    )
    assert {"https://a/": "http://m/a/", "https://b/": "http://m/b/?x=1"} == mirrors
    assert "c.yaml" == config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["images", "push", "--dry-run", "false"], "unrecognized arguments: false"),
        (["images", "push", "--dry-run=maybe"], "invalid boolean 'maybe'"),
        (["images", "push", "--bogus"], "unrecognized arguments: --bogus"),
        (["images"], "a SUBCOMMAND is required"),
        ([], "a COMMAND is required"),
        (["images", "push", "--upstream-mirror", "nonsense"], "invalid flag --upstream-mirror"),
        (["images", "push", "--output", "xml"], "invalid choice: 'xml'"),
        (["images", "push", "--dry"], "unrecognized arguments: --dry"),  # no abbreviations
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse(argv)


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int, needle: str) -> None:
    assert status == result.returncode, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith("containerdisks: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["images", "push", "--workers=zero"], {}, "argument --workers: invalid int value"),
        (
            ["images", "push", "--workers=0"],
            {},
            "invalid flag --workers: Input should be greater than 0",
        ),
        (["images", "push", "--wat"], {}, "unrecognized arguments: --wat"),
        (["images", "push"], {"CONTAINERDISKS_WORKERS": "-1"}, "CONTAINERDISKS_WORKERS"),
        (
            ["images", "push", "--focus", "nosuch:*"],
            {},
            "focus 'nosuch:*' matches no catalog entry",
        ),
        (["images", "push", "--focus", "fedora"], {}, "expected name:version or name:*"),
        (["images", "push", "--config", "/nonexistent/c.yaml"], {}, "No such file"),
        (["images", "push", "--source-registry", "Bad Host!/x"], {}, "source_registry"),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    one_line_error(run(*args, env=env), 2, needle)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("workers: [1\n", "invalid YAML at line 2"),
        (
            "entries:\n  - name: x\n    version: 9\n    arches: [x86_64]\n"
            "    source: {kind: fedora}\n",
            "version 9 must be a quoted string",
        ),
        (
            "entries:\n  - name: x\n    version: '9'\n    arches: [x86_64]\n"
            "    source: {kind: checksum-file}\n",
            "source.url (x86_64): Field required",
        ),
        ("colour: blue\n", "unknown setting 'colour'"),
    ],
)
def test_bad_config_file_exits_2_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(run("images", "push", "--config", str(path)), 2, needle)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("output: xml\n")
    one_line_error(
        run("images", "push", env={"CONTAINERDISKS_CONFIG": str(path)}),
        2,
        f"config file {path}: setting 'output'",
    )


def test_help_exits_0() -> None:
    result = run("images", "push", "--help")
    assert 0 == result.returncode
    assert "--dry-run" in result.stdout
    assert "--source-registry" in result.stdout


def test_help_imports_no_command_nor_the_settings() -> None:
    """`--help` parses and exits: no command, no settings, no aiohttp (start-up time)."""
    probe = (
        "import sys\n"
        "from containerdisks import cli\n"
        "try:\n"
        "    cli.main(['images', 'verify', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = ('aiohttp', 'pydantic_settings', 'containerdisks.settings',\n"
        "         'containerdisks.commands.verify')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert 0 == result.returncode, result.stderr
    assert "--registry" in result.stdout
    assert "[]" == result.stderr.strip()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["images", "push"], "focus 'nosuch:1' matches no catalog entry"),
        (["images", "prune"], "focus 'nosuch:1' matches no catalog entry"),
        (["serve", "--once"], "focus 'nosuch:1' matches no catalog entry"),
        (["catalog"], "focus 'nosuch:1' matches no catalog entry"),
        (["docs", "publish", "--registry", "x"], "expected quay.io/<organization>"),
        (["images", "verify", "--local"], "results.json"),
        (["images", "promote", "--source-registry", "localhost:5000/staging"], "results.json"),
    ],
)
def test_every_command_runs_its_own_code(tmp_path: Path, argv: list[str], needle: str) -> None:
    """Each command is dispatched to its own `run`: it fails as only that command would."""
    one_line_error(run(*argv, "--focus", "nosuch:1", cwd=tmp_path), 2, needle)


def test_promote_needs_its_source_registry() -> None:
    with pytest.raises(UsageError, match="--source-registry"):
        parse(["images", "promote"])
    assert parse(["images", "promote", "--source-registry", "r/x", "--no-fail"])[1] == {
        "source_registry": "r/x",
        "no_fail": True,
    }
    # promote's target is its own setting, never push's target_registry (staging)
    argv = ["images", "promote", "--source-registry", "r/x", "--target-registry", "t/y"]
    assert parse(argv)[1] == {"source_registry": "r/x", "promote_registry": "t/y"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["images", "--workers", "2", "push"], ("images_push", {"workers": 2})),
        (
            ["images", "--results-file", "F", "--no-fail", "verify", "--local"],
            ("images_verify", {"results_file": "F", "no_fail": True, "verify_local": True}),
        ),
        (["--dry-run", "images", "--workers=3", "promote", "--source-registry", "r/ns"],
         ("images_promote", {"dry_run": True, "workers": 3, "source_registry": "r/ns"})),
        (["docs", "--quay-token-file", "t", "publish"], ("docs_publish", {"quay_token_file": "t"})),
    ],
)  # fmt: skip
def test_medius_flag_positions_on_the_group_work(
    argv: list[str], expected: tuple[str, dict[str, object]]
) -> None:
    """medius's persistent flags stand on `images` before the subcommand."""
    assert expected == parse(argv)[:2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["images", "push", "--dryrun=false"], "--dryrun=false (did you mean --dry-run?)"),
        (["images", "push", "--work-dirr", "w"], "--work-dirr w (did you mean --work-dir?)"),
        (["catalog", "--outptu", "json"], "(did you mean --output?)"),
    ],
)
def test_a_mistyped_flag_suggests_the_right_one(args: list[str], needle: str) -> None:
    one_line_error(run(*args), 2, needle)


def test_an_unknown_flag_far_from_any_gets_no_suggestion() -> None:
    result = run("images", "push", "--zzz")
    one_line_error(result, 2, "unrecognized arguments: --zzz")
    assert "did you mean" not in result.stderr
