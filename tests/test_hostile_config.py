"""A hostile or broken config: `containerdisks images push` as a real process says one line and
exits 2, in bounded time and memory.

The config file: not UTF-8, a key twice, an alias bomb ("billion laughs"), nesting deeper than
any catalog, a NUL, a 5000-digit number. The environment: a table variable
(`CONTAINERDISKS_UPSTREAM_MIRRORS`) that is not JSON, or JSON nested 50,000 deep. Each names the
file (and line) or the variable. The command's own peak RSS is measured
(tests/support/peak_rss.py); an address-space limit keeps a regression from eating the shared
machine's memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from containerdisks import catalog, yamlfile
from containerdisks.settings import ConfigError, load_config_file
from tests.support import peak_rss
from tests.support.cli import clean_env

SECONDS = 15.0  # generous: a shared, noisy machine; the unbounded bomb took 32 s
MAX_RSS_MIB = 200  # the unbounded bomb took 1.6 GB
ADDRESS_SPACE = 2 << 30
#: Should a config be accepted after all, the pass it starts stays on a dead loopback port.
LOOPBACK = [
    "--source-registry",
    "127.0.0.1:9/cd",
    "--upstream-mirror",
    "https://=http://127.0.0.1:9/",
]


def run_push(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, float, float]:
    """(exit status, stderr, seconds, peak RSS in MiB) of `images push` with `args`."""
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        run = peak_rss.run_measured(
            [sys.executable, "-m", "containerdisks", "images", "push", *LOOPBACK, *args],
            cwd=tmp_path,
            env=clean_env(**(env or {})),
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=4 * SECONDS,
            address_space=ADDRESS_SPACE,
        )
    stderr = err_path.read_text(errors="replace")
    return run.returncode, stderr, run.seconds, run.peak_rss_mib


def one_line_exit_2(result: tuple[int, str, float, float], *needles: str) -> None:
    status, stderr, took, rss = result
    lines = stderr.strip().splitlines()
    assert 2 == status, stderr
    assert 1 == len(lines), stderr
    assert lines[0].startswith("containerdisks: ")
    for needle in needles:
        assert needle in lines[0]
    assert took < SECONDS, took
    assert rss < MAX_RSS_MIB, rss


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    """`width ** levels` strings from a few hundred bytes, all under the catalog's `entries`."""
    lines = ["entries:", f"  - &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"  - &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"dry_run: true\nfocus: 'fedora:\xff'\n", ["not UTF-8 at line 2", "byte 0xff"]),
        (
            b"dry_run: true\nworkers: 2\ndry_run: false\n",
            ["invalid YAML at line 3: duplicate key 'dry_run' (first at line 1)"],
        ),
        (billion_laughs().encode(), ["aliases expand to more than 100000 nodes"]),
        (b"entries: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", ["nested deeper than 64 levels"]),
        (b"a: &a [*a]\n", ["an alias refers to a node that contains it"]),
        (b"focus: 'a\x00b'\n", ["at line 1: special characters are not allowed"]),
        (b"workers: " + b"9" * 5000 + b"\n", ["invalid YAML", "5000 digits"]),
    ],
    ids=["not-utf8", "duplicate-key", "alias-bomb", "deep", "recursive-alias", "nul", "huge-int"],
)
def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes, needles: list[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    result = run_push(tmp_path, "--config", str(path))
    one_line_exit_2(result, f"config file {path}: ", *needles)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('{"https://a.example/": ', "not JSON at character"),
        ("", "not JSON at character 0"),
        ("[" * 50_000 + "]" * 50_000, "JSON nested too deeply"),
    ],
    ids=["truncated", "empty", "deep"],
)
def test_a_bad_json_variable_is_one_line_and_exit_2(
    tmp_path: Path, value: str, needle: str
) -> None:
    result = run_push(tmp_path, env={"CONTAINERDISKS_UPSTREAM_MIRRORS": value})
    one_line_exit_2(result, "invalid environment variable CONTAINERDISKS_UPSTREAM_MIRRORS", needle)


def _nested(levels: int) -> bytes:
    return b"a: " + b"[" * levels + b"1" + b"]" * levels + b"\n"


AGREE = {
    "default-catalog": Path(catalog.__file__).parent.parent.joinpath("config/catalog.yaml"),
    "not-utf8": b"dry_run: true\nfocus: 'fedora:\xff'\n",
    "duplicate-key": b"dry_run: true\nworkers: 2\ndry_run: false\n",
    "alias-bomb": billion_laughs().encode(),
    "deep": b"entries: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    "recursive-alias": b"a: &a [*a]\n",
    "nul": b"focus: 'a\x00b'\n",
    "bell": b"focus: 'a\x07b'\n",
    "huge-int": b"workers: " + b"9" * 5000 + b"\n",
    "unclosed": b"workers: [1\n",
    "merge": b"x: &b {i: 5, w: 2}\ny:\n  <<: *b\n  w: 3\n",
    "empty": b"",
    "two-documents": b"a: 1\n---\nb: 2\n",
    **{f"nested-{n}": _nested(n) for n in (61, 62, 63, 64)},
}


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize("case", list(AGREE))
def test_libyaml_and_the_pure_python_loader_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The config and catalog reader parses with libyaml when it can (start-up time), and falls
    back to the pure-Python loader otherwise: the data, or the one-line error, is the same."""
    source = AGREE[case]
    path = tmp_path / "doc.yaml"
    path.write_bytes(source.read_bytes() if isinstance(source, Path) else source)

    def read() -> tuple[str, object]:
        try:
            return "data", yamlfile.read_yaml_file(path)
        except yamlfile.YamlFileError as e:
            return "error", str(e)

    fast = read()
    monkeypatch.setattr(yamlfile, "_CLoaderBase", None)
    assert read() == fast
    if case in ("default-catalog", "merge", "empty", "nested-61", "nested-62"):
        assert "data" == fast[0]  # read by libyaml, not handed to the pure-Python loader
        monkeypatch.undo()
        assert fast[1] == yamlfile._read_fast(path.read_text())
    else:
        assert "error" == fast[0]


def test_merge_keys_may_override_and_anchors_still_work(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "x-base: &base {interval: 5, workers: 2}\n"
        "x-copy:\n  <<: *base\n  workers: 3\n"  # an override of a merged key is no duplicate
        "upstream_mirrors: &m {'https://a.example/': 'http://127.0.0.1:9/'}\n"
    )
    data = load_config_file(path)
    assert {"interval": 5, "workers": 3} == data["x-copy"]
    assert {"https://a.example/": "http://127.0.0.1:9/"} == data["upstream_mirrors"]


def test_the_default_catalog_is_read_by_the_same_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("entries: []\nentries: []\n")
    monkeypatch.setattr(catalog, "default_catalog_path", lambda: path)
    with pytest.raises(ConfigError) as e:
        catalog.load_catalog({}, {})
    expected = "invalid YAML at line 2: duplicate key 'entries' (first at line 1)"
    assert f"default catalog {path}: {expected}" == str(e.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "not JSON (JSON nested too deep)"),
        ('{"auths": {"127.0.0.1:9": {"auth": ', "not JSON (line 1)"),
    ],
    ids=["deep", "truncated"],
)
def test_a_bad_auth_file_is_one_line_and_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    """The registry credentials file (containers-auth.json(5)) is outside input too."""
    auth = tmp_path / "auth.json"
    auth.write_text(content)
    result = run_push(tmp_path, env={"REGISTRY_AUTH_FILE": str(auth)})
    one_line_exit_2(result, f"{auth}: {needle}")
