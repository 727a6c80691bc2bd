"""Settings layering (defaults < file < env < flags) and one-line configuration errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from containerdisks.settings import ConfigError, load_config_file, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONTAINERDISKS_"):
            monkeypatch.delenv(key)


def test_defaults_follow_medius() -> None:
    s = load_settings()
    assert (True, "quay.io/containerdisks", "quay.io/containerdisks", 1, Path("results.json")) == (
        s.dry_run,
        s.source_registry,
        s.target,
        s.workers,
        s.results_file,
    )


def test_file_beats_defaults_env_beats_file_flags_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    file_data = {"workers": 2, "source_registry": "file.example/ns", "force": True}
    assert 2 == load_settings({}, file_data).workers
    monkeypatch.setenv("CONTAINERDISKS_WORKERS", "3")
    s = load_settings({}, file_data)
    assert (3, "file.example/ns", True) == (s.workers, s.source_registry, s.force)
    assert 4 == load_settings({"workers": 4}, file_data).workers


def test_flag_mirrors_add_to_env_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERDISKS_UPSTREAM_MIRRORS", '{"https://a/": "http://m/a/"}')
    s = load_settings({}, {}, extra_mirrors={"https://b/": "http://m/b/"})
    assert {"https://a/": "http://m/a/", "https://b/": "http://m/b/"} == s.upstream_mirrors


def test_env_bool_accepts_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERDISKS_DRY_RUN", "false")
    assert load_settings().dry_run is False


@pytest.mark.parametrize(
    ("flags", "env", "file_data", "message"),
    [
        ({"workers": 0}, {}, {}, "invalid flag --workers: Input should be greater than 0 (got 0)"),
        (
            {},
            {"CONTAINERDISKS_WORKERS": "many"},
            {},
            "invalid environment variable CONTAINERDISKS_WORKERS",
        ),
        ({}, {}, {"output": "xml"}, "invalid config file: setting 'output'"),
        ({}, {}, {"wokers": 2}, "config file: unknown setting 'wokers'"),
    ],
)
def test_bad_setting_is_one_line_naming_its_source(
    monkeypatch: pytest.MonkeyPatch,
    flags: dict[str, object],
    env: dict[str, str],
    file_data: dict[str, object],
    message: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings(flags, file_data)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers: [1\n", "invalid YAML at line 2"),
        ("- a\n- b\n", "expected a mapping at the top level"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: No such file"):
        load_config_file(tmp_path / "nope.yaml")
