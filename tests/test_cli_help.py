"""Every command's `--help` (found by walking the parser, run as a real process) says what it
does, shows examples of itself and its exit statuses, and lists only the flags it takes; and
`--focus` takes several entries, repeated or comma-separated, from flags, env and config file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerdisks.cli import GROUPS_OF, build_parser
from tests.support.cli import clean_env

#: The flags of each group of `cli.GROUPS_OF` (the flags a command may also take before it).
REGISTRY = {"--insecure-skip-tls", "--ca-file", "--authfile"}
GROUP_FLAGS = {
    "focus": {"--focus"},
    "dry-run": {"--dry-run"},
    "registry": REGISTRY,
    "ca": {"--ca-file"},
    "upstream": {"--upstream-mirror"},
}
EVERY_COMMAND = {"--help", "--config", "--log-level", "--log-format"}


def commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(the words naming each runnable command, its handler), from the parser itself."""
    handler = parser.get_default("handler")
    if handler is not None:
        yield words, handler
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*words, name))


COMMANDS = sorted(commands(build_parser()))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**(env or {})),
    )


def names(example: list[str], words: tuple[str, ...]) -> bool:
    """Whether the command line `example` runs the command `words` (flags may stand between
    a group and its subcommand: `images --results-file F verify`)."""
    rest = iter(example[1:])
    return all(w in rest for w in words) and not example[1].startswith("-")


def sections(text: str) -> dict[str, str]:
    """`usage`, `description`, `options`, `examples`, `exit status` of a help text."""
    usage, _, rest = text.partition("\n\n")
    description, _, rest = rest.partition("\noptions:\n")
    options, _, rest = rest.partition("\nexamples:\n")
    examples, _, exits = rest.partition("\nexit status:\n")
    return {
        "usage": usage,
        "description": description.strip(),
        "options": options,
        "examples": examples,
        "exit status": exits,
    }


def test_the_walk_finds_every_command_the_cli_dispatches() -> None:
    assert len(COMMANDS) >= 9
    assert {h for _, h in COMMANDS} == set(GROUPS_OF)
    assert ("images", "verify-signatures") in [w for w, _ in COMMANDS]


@pytest.mark.parametrize(("words", "handler"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_each_command_help_has_description_examples_exits_and_only_its_flags(
    words: tuple[str, ...], handler: str
) -> None:
    result = run(*words, "--help")
    assert 0 == result.returncode, result.stderr
    help_ = sections(result.stdout)
    name = " ".join(words)

    sentences = [s for s in re.split(r"(?<=\.)\s+", help_["description"]) if s]
    assert 1 <= len(sentences) <= 3, help_["description"]
    assert all(len(line) <= 79 for line in help_["description"].splitlines())

    examples = [line.split() for line in help_["examples"].splitlines() if line.strip()]
    assert examples, result.stdout
    assert all(e[0] == "containerdisks" and names(e, words) for e in examples), examples
    assert any(" ".join(e).startswith(f"containerdisks {name}") for e in examples)

    codes = {line.split()[0] for line in help_["exit status"].splitlines() if line.strip()}
    listed = set(re.findall(r"^  (--[a-z-]+|-h, --help)", help_["options"], re.M))
    listed = {f.removeprefix("-h, ") for f in listed}
    assert {"0", "2", "130/143"} <= codes
    assert ("3" in codes) == ("--exit-code" in listed), "3 is the dry run's --exit-code"

    expected_global = set().union(*(GROUP_FLAGS[g] for g in GROUPS_OF[handler]))
    every_global = set().union(*GROUP_FLAGS.values())
    assert EVERY_COMMAND <= listed
    assert listed & every_global == expected_global, "the global flags that apply to it"


@pytest.mark.parametrize(
    ("words", "absent"),
    [
        (("catalog",), REGISTRY | {"--dry-run", "--upstream-mirror", "--registry", "--workers"}),
        (("results", "merge"), REGISTRY | {"--focus", "--dry-run", "--upstream-mirror"}),
        (("docs", "publish"), {"--insecure-skip-tls", "--authfile", "--workers"}),
        (("images", "prune"), {"--upstream-mirror", "--sign-key", "--kubeconfig"}),
        (("images", "verify-signatures"), {"--dry-run", "--upstream-mirror", "--sign-key"}),
        (("images", "promote"), {"--upstream-mirror", "--kubeconfig", "--exit-code"}),
        (("images", "verify"), {"--upstream-mirror", "--sign-key", "--exit-code"}),
    ],
)
def test_help_does_not_offer_flags_the_command_does_not_read(
    words: tuple[str, ...], absent: set[str]
) -> None:
    text = run(*words, "--help").stdout
    assert set() == {f for f in absent if re.search(rf"^  {f}\b", text, re.M)}
    # Nor is such a flag taken, after or before the command: one line naming the command.
    for flag in sorted(absent & (REGISTRY | {"--dry-run"})):
        given = flag + ("=true" if flag in ("--dry-run", "--insecure-skip-tls") else "=x")
        operands = ["r.json"] if words == ("results", "merge") else []
        for argv in ([*words, given], [given, *words]):
            result = run(*argv, *operands)
            assert 2 == result.returncode
            assert f"{flag} does not apply to {' '.join(words)}" in result.stderr, argv


@pytest.mark.parametrize(
    ("words", "present"),
    [
        (("images", "push"), {"--authfile", "--sign-key", "--exit-code", "--shard", "--output"}),
        (("serve",), {"--authfile", "--leader-elect", "--shards", "--lease-name", "--exit-code"}),
        (("images", "verify"), {"--master", "--authfile", "--verify-key", "--kubeconfig"}),
        (("images", "promote"), {"--authfile", "--verify-key", "--source-registry"}),
        (("images", "verify-signatures"), {"--authfile", "--verify-key", "--output"}),
        (("docs", "publish"), {"--ca-file", "--quay-token-file", "--upstream-mirror"}),
    ],
)
def test_the_other_helpers_flags_stay_on_their_commands(
    words: tuple[str, ...], present: set[str]
) -> None:
    text = run(*words, "--help").stdout
    assert set() == {f for f in present if not re.search(rf"^  {f}\b", text, re.M)}


# -- several --focus values ------------------------------------------------------------------


def listed(*args: str, env: dict[str, str] | None = None) -> list[str]:
    result = run("catalog", "--output", "json", *args, env=env)
    assert 0 == result.returncode, result.stderr
    return [e["entry"] for e in json.loads(result.stdout)["entries"]]


def test_focus_repeated_and_comma_separated_is_the_union() -> None:
    # cirros is test-only: listed under a focus only because a term names it.
    assert ["debian:11", "debian:12", "cirros:6.1"] == listed(
        "--focus", "debian:11,cirros:6.1", "--focus", "debian:12"
    )
    assert ["debian:11", "debian:13", "fedora:*"] == listed(
        "--focus=debian:13", "--focus", " fedora:*, debian:11 ,debian:13"
    )


def test_focus_before_and_after_the_command_add_up() -> None:
    result = run("--focus", "debian:13", "catalog", "--output=json", "--focus", "debian:11")
    assert 0 == result.returncode, result.stderr
    assert ["debian:11", "debian:13"] == [e["entry"] for e in json.loads(result.stdout)["entries"]]


def test_focus_from_env_and_config_file_takes_the_same_syntax(tmp_path: Path) -> None:
    env = {"CONTAINERDISKS_FOCUS": "debian:12,cirros:6.1"}
    assert ["debian:12", "cirros:6.1"] == listed(env=env)
    # A flag replaces the setting (flags win over env), the flag's terms being the union.
    assert ["debian:11"] == listed("--focus", "debian:11", env=env)
    config = tmp_path / "c.yaml"
    config.write_text("focus: [debian:13, 'cirros:*']\n")
    assert ["debian:13", "cirros:6.1"] == listed("--config", str(config))


@pytest.mark.parametrize(
    ("focus", "message"),
    [
        (["debian:12,nosuch:1"], "containerdisks: focus 'nosuch:1' matches no catalog entry"),
        (["nosuch:1", "debian:99,zz:*"], "focus 'nosuch:1', 'debian:99', 'zz:*' match no"),
        (["debian:12,debian"], "invalid flag --focus 'debian': expected name:version or name:*"),
    ],
)
def test_a_focus_term_that_selects_nothing_is_named_exit_2(focus: list[str], message: str) -> None:
    result = run("catalog", *(a for f in focus for a in ("--focus", f)))
    assert 2 == result.returncode
    assert 1 == len(result.stderr.splitlines()), result.stderr
    assert message in result.stderr
