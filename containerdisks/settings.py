"""Settings: every knob, with its default, its `CONTAINERDISKS_*` variable and its validation.

Precedence (docs/settings.md): defaults < YAML config file (`--config`) < environment < flags.
The YAML file is flat: every setting by its field name, plus the catalog keys `entries` and
`catalog` (read by `containerdisks.catalog`). pydantic-settings provides the environment layer;
the file and the flags are layered here, so that one `ConfigError` line names whichever source
was wrong.
The upstream mirror table is the one merged setting: flags add pairs to the table from the
environment or the file instead of replacing it.

Decisions:
- Settings are grouped by concern in the code: one small model per group (run, registries,
  upstream, connections, image, verify, daemon, docs, output), each holding its fields and
  their validators; `Settings` inherits them all. Fields stay flat attributes
  (`settings.max_image_bytes`), so names, `CONTAINERDISKS_*` variables, flags and the config
  file are unchanged by the grouping, and docs/settings.md orders its tables by the same groups.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal, Self, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from containerdisks.yamlfile import YamlFileError, read_yaml_file

__all__ = [
    "CATALOG_KEYS",
    "MAX_SHARDS",
    "ConfigError",
    "ConnectionSettings",
    "DaemonSettings",
    "DocsSettings",
    "ImageSettings",
    "OutputSettings",
    "RegistrySettings",
    "RunSettings",
    "Settings",
    "UpstreamSettings",
    "VerifySettings",
    "load_config_file",
    "load_settings",
    "parse_listen",
    "parse_shard",
]

ENV_PREFIX = "CONTAINERDISKS_"
#: Keys of the config file that belong to the catalog, not to the settings.
CATALOG_KEYS = frozenset({"entries", "catalog", "repositories"})


class ConfigError(Exception):
    """A setting, flag, config file or catalog is wrong. The message is one line naming it."""


#: The most shards a run may ask for (bounds the work, and a typo like `1/10000000`).
MAX_SHARDS = 1024
#: Set by Kubernetes in each pod of an Indexed Job: the pod's index, from 0.
JOB_INDEX_VARIABLE = "JOB_COMPLETION_INDEX"


def parse_shard(spec: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N <= MAX_SHARDS, decimal digits) -> (I, N); a ValueError saying what is
    wrong in one line."""
    index, sep, count = spec.partition("/")
    digits = index.isascii() and index.isdigit() and count.isascii() and count.isdigit()
    if not sep or not digits or len(index) > 5 or len(count) > 5:
        raise ValueError(f"{spec!r} is not INDEX/COUNT, e.g. 0/4")
    i, n = int(index), int(count)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"{spec!r}: the count must be between 1 and {MAX_SHARDS}")
    if i >= n:
        raise ValueError(f"{spec!r}: the index counts from 0 and must be below {n}")
    return i, n


class RunSettings(BaseModel):
    """What one run does: which entries, how many at once, what it may change."""

    dry_run: bool = Field(True, description="Don't publish anything; plan only (medius default).")
    focus: str = Field(
        "",
        description="Only these entries: `name:version` or `name:*`, several comma-separated "
        "(a list in a config file; `--focus` repeated adds to it); empty for all.",
    )
    workers: PositiveInt = Field(1, description="Entries processed concurrently.")
    force: bool = Field(False, description="Rebuild every arch of the focused entries.")
    no_fail: bool = Field(False, description="Exit 0 even when an entry failed.")
    exit_code: bool = Field(
        False,
        description="A dry run of `images push` / `serve --once` exits 3 when something would "
        "be published (0 when nothing would), as `git diff --exit-code`.",
    )
    results_file: Path = Field(
        Path("results.json"),
        description="medius-compatible results file (not written in dry run); with a shard and "
        "none given, `results-I-of-N.json`.",
    )
    shard: str = Field(
        "",
        description="`I/N`: publish only shard I (from 0) of N, a fixed part of the catalog "
        'balanced by arches; empty for all (docs/running.md, "Shards for CI jobs").',
    )
    shard_count: int = Field(
        0,
        ge=0,
        le=MAX_SHARDS,
        description="N of an Indexed Job: with no `shard` given, the shard is "
        "`$JOB_COMPLETION_INDEX/N`; 0 for none.",
    )

    @field_validator("focus", mode="before")
    @classmethod
    def _focus_list_is_joined(cls, v: Any) -> Any:
        """A config file's list of terms is the comma-separated union (`Focus` parses it)."""
        if isinstance(v, list) and all(isinstance(t, str) for t in v):
            return ",".join(v)
        return v

    @field_validator("shard")
    @classmethod
    def _shard_is_index_of_count(cls, v: str) -> str:
        if v:
            parse_shard(v)
        return v

    @property
    def shard_part(self) -> tuple[int, int] | None:
        """`shard` as (index, count); None when this run publishes the whole catalog."""
        return parse_shard(self.shard) if self.shard else None


class RegistrySettings(BaseModel):
    """Where images are read from and written to, and how registries are trusted."""

    source_registry: str = Field(
        "quay.io/containerdisks",
        description="Registry (`host[:port]/namespace`) read to decide what needs publishing; "
        "when unset and `target_registry` is an `oci:/dir`, that directory.",
    )
    target_registry: str = Field(
        "", description="Registry to publish to; empty means the source registry."
    )
    promote_registry: str = Field(
        "quay.io/containerdisks",
        description="`images promote --target-registry`: registry (`host[:port]/namespace` or "
        "`oci:/dir`) the verified images are copied to; never `target_registry`, which is "
        "where `images push` writes (staging).",
    )
    insecure_skip_tls: bool = Field(
        False,
        description="Skip TLS certificate verification for registries, allow the plain-HTTP "
        "fallback for any host, and allow a plain-HTTP token service for an HTTPS registry.",
    )
    ca_file: Path | None = Field(None, description="Extra CA bundle (PEM) to verify registries.")
    sign_key: Path | None = Field(
        None,
        description="ECDSA P-256 private key (PKCS#8 PEM; passphrase in "
        "`CONTAINERDISKS_SIGN_KEY_PASSPHRASE`) that signs and attests what `images push` and "
        "`serve` publish; none: nothing is signed.",
    )
    verify_key: Path | None = Field(
        None,
        description="Public key (PEM) whose signatures and provenance `images verify` checks "
        "before it boots, `images promote` requires, and `images verify-signatures` checks.",
    )
    sign_identity: str = Field(
        "",
        description="Repository prefix (`host/namespace`) named in signatures as the "
        "`docker-reference`; empty: `promote_registry`, where users pull from.",
    )
    auth_file: Path | None = Field(
        None,
        description="`--authfile`: registry credentials file (containers-auth.json(5)) searched "
        "first, in place of `REGISTRY_AUTH_FILE`; then `${XDG_RUNTIME_DIR}/containers/auth.json` "
        "(`/run/containers/$UID/auth.json` without `XDG_RUNTIME_DIR`), "
        "`${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`, `$DOCKER_CONFIG/config.json` "
        "(`~/.docker/config.json`). A given file that is missing is an error.",
    )

    @property
    def target(self) -> str:
        """Where `images push` writes: the target registry, else the source registry."""
        return self.target_registry or self.source_registry

    @model_validator(mode="before")
    @classmethod
    def _layout_target_plans_against_itself(cls, data: Any) -> Any:
        """An `oci:/dir` target with no source given anywhere is also the source: a directory
        filled offline is planned against what it holds, never against quay.io."""
        if isinstance(data, dict) and "source_registry" not in data:
            target = data.get("target_registry")
            if isinstance(target, str) and target.startswith("oci:"):
                return {**data, "source_registry": target}
        return data


class UpstreamKey(BaseModel):
    """A key a user adds to a keyring for upstream signatures (`upstream_keys`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path = Field(description="The public key: an armoured (.asc) or binary OpenPGP file.")
    fingerprint: str = Field(
        description="Its primary fingerprint (40 hex digits): the only key in the file trusted."
    )
    expires: datetime.date | None = Field(
        None, description="After this date, signatures by it are refused naming the key."
    )

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, v: str) -> str:
        fpr = "".join(v.split()).upper()
        if not re.fullmatch(r"[0-9A-F]{40}", fpr):
            raise ValueError(f"fingerprint {v[:60]!r} is not 40 hex digits")
        return fpr


class UpstreamSettings(BaseModel):
    """How the distributions' servers are reached and bounded."""

    upstream_signatures: bool = Field(
        True,
        description="Verify the distributions' OpenPGP signatures as each catalog entry's "
        "`signature` says; false treats every entry as `signature: none` (TLS only).",
    )
    upstream_keys: dict[str, list[UpstreamKey]] = Field(
        default_factory=dict,
        description="Keys added to a keyring (by name: `ubuntu`, `fedora-48`, or a new one) "
        "for upstream signatures: a list of {file, fingerprint, expires}.",
    )

    upstream_mirrors: dict[str, str] = Field(
        default_factory=dict,
        description="URL prefix rewrite table for every upstream request (FROM -> TO).",
    )
    min_transfer_rate: int = Field(
        1_000_000,
        ge=0,
        description="Bytes per second an image download must bring over each "
        "`min_transfer_rate_window`, else it fails and is retried; 0 turns the check off.",
    )
    min_transfer_rate_window: PositiveFloat = Field(
        60.0, description="Seconds over which `min_transfer_rate` is measured."
    )
    download_deadline: PositiveFloat = Field(
        7200.0,
        description="Seconds one image download may take in all, else it fails and is retried "
        "(2 h: 7.2 GB at the minimum rate, several times the largest cloud image).",
    )
    metadata_deadline: PositiveFloat = Field(
        60.0,
        description="Seconds a metadata request (releases.json, a checksum file) may take in "
        "all, retries included.",
    )
    discovery_timeout: PositiveFloat = Field(
        300.0,
        description="Seconds one catalog item's discovery may take in a pass; then its entries "
        "fail and the others go on.",
    )

    @field_validator("upstream_mirrors")
    @classmethod
    def _mirrors_nonempty(cls, v: dict[str, str]) -> dict[str, str]:
        for src, dst in v.items():
            if not src or not dst:
                raise ValueError("mirror prefixes must not be empty")
        return v


class ConnectionSettings(BaseModel):
    """Every HTTP client's timeouts and retries (upstream, registries, Quay)."""

    connect_timeout: PositiveFloat = Field(15.0, description="Seconds to connect to a server.")
    read_timeout: PositiveFloat = Field(
        60.0, description="Seconds a server may stay silent while answering."
    )
    retries: PositiveInt = Field(
        4, description="Attempts for a transient upstream, registry or Quay API failure (>= 1)."
    )


class ImageSettings(BaseModel):
    """What a published image is made of, the bounds on its input, and tag retention."""

    media_types: Literal["docker", "oci"] = Field(
        "docker", description="Media-type family of published manifests and indexes."
    )
    layer_compression: Literal["gzip", "zstd", "none"] = Field(
        "gzip", description="Layer compression; zstd and none need `media_types: oci`."
    )
    work_dir: Path = Field(
        Path(tempfile.gettempdir()) / "containerdisks",
        description="Directory for spooled downloads (decompressed or of unknown size).",
    )
    max_spool_bytes: PositiveInt = Field(
        64 << 30, description="Largest spooled download; a bigger one fails its entry."
    )
    max_virtual_size: PositiveInt = Field(
        2 << 40,
        description="Largest virtual size (bytes) of a qcow2 image; a bigger one is refused by "
        "`images push` and `images verify --local`.",
    )
    max_image_bytes: PositiveInt = Field(
        64 << 30,
        description="Largest image download, and largest disk after decompression (also in "
        "`images verify`); a bigger one fails its entry before anything is published.",
    )
    keep_timestamp_tags: int = Field(
        0,
        ge=0,
        description="Retention: keep the newest N `<version>-<YYMMDDhhmm>` tags of each entry "
        "and delete older ones after each publish and in `images prune`; 0 keeps all. A catalog "
        "entry's `keep_timestamp_tags` overrides it.",
    )

    @model_validator(mode="after")
    def _layers_fit_media_types(self) -> Self:
        if self.media_types == "docker" and self.layer_compression != "gzip":
            raise ValueError(
                f"layer_compression {self.layer_compression} needs media_types oci "
                "(Docker schema 2 knows gzip layers only)"
            )
        return self


class VerifySettings(BaseModel):
    """`images verify`: where images are pulled from and how the guests boot."""

    verify_registry: str = Field(
        "",
        description="`images verify --registry`: registry (`host[:port]/namespace`) the pushed "
        "images are pulled from; empty means the target registry (`--local` only).",
    )
    verify_local: bool = Field(
        False, description="`images verify --local`: boot under qemu on this host, no cluster."
    )
    verify_timeout: PositiveFloat = Field(
        600.0,
        description="`images verify --timeout`: seconds a guest gets from power-on to a "
        "successful SSH login.",
    )
    target_architecture: Literal["", "amd64", "arm64", "s390x"] = Field(
        "",
        description="`images verify --target-architecture`: the arch to verify; empty means "
        "this host's arch (`--local`).",
    )
    verify_firmware: Literal["uefi", "bios"] = Field(
        "uefi",
        description="`images verify --firmware`: how `--local` boots images whose catalog entry "
        "does not ask for Secure Boot (UEFI from OVMF, or SeaBIOS).",
    )
    verify_accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto",
        description="`images verify --accel`: qemu accelerator for `--local`; `auto` uses KVM "
        "when /dev/kvm is usable, else TCG.",
    )
    verify_memory_mib: PositiveInt = Field(
        1024, description="`images verify`: guest memory in MiB (medius's VM has 1Gi)."
    )
    verify_qemu_user: str = Field(
        "nobody",
        description="`images verify --local` run as root: the user qemu runs as (never root); "
        "give a dedicated one where other services run as `nobody`.",
        min_length=1,
    )
    verify_ssh_attempts: PositiveInt = Field(
        30,
        description="`images verify`: SSH attempts (medius: 30); in KubeVirt every try through "
        "the port-forward counts, `--local` counts logins once the guest answers.",
    )
    kubeconfig: str = Field(
        "",
        description="`images verify --kubeconfig`: kubeconfig file for KubeVirt; empty means "
        "the files `KUBECONFIG` names (one that names no existing file is an error), else "
        "`~/.kube/config`, else the in-cluster service account.",
    )
    kube_master: str = Field(
        "",
        description="`images verify --master`: Kubernetes API server URL; replaces the server "
        "of the kubeconfig found, or without one is the server (no credentials), as medius's "
        "`--master`.",
    )
    verify_namespace: str = Field(
        "kubevirt",
        description="`images verify --namespace`: namespace the verify VMs are created in.",
    )
    verify_poll_interval: PositiveFloat = Field(
        1.0, description="`images verify`: seconds between VM readiness polls (medius: 1)."
    )
    verify_retry_interval: PositiveFloat = Field(
        10.0,
        description="`images verify`: seconds between guest-agent and SSH attempts in KubeVirt "
        "(medius: 10).",
    )


class DaemonSettings(BaseModel):
    """`serve`: passes, the scheduler's queue and backoff, and the HTTP server."""

    once: bool = Field(False, description="`serve`: run exactly one pass, then exit.")
    interval: PositiveFloat = Field(1800.0, description="`serve`: seconds between passes.")
    interval_jitter: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="`serve`: up to this fraction of `interval` is added at random to each wait.",
    )
    queue_size: PositiveInt = Field(
        64, description="`serve`: entries waiting for a worker; a full queue holds the pass back."
    )
    listen: str = Field(
        "0.0.0.0:8080",  # a pod's probes and Prometheus reach it from outside
        description="`serve`: HOST:PORT of the health, readiness, metrics and status server.",
    )
    shutdown_grace: float = Field(
        30.0,
        ge=0.0,
        description="`serve`: seconds in-flight syncs get to finish after SIGTERM/SIGINT.",
    )
    backoff_initial: PositiveFloat = Field(
        60.0, description="`serve`: seconds before a failed entry is tried again (doubles)."
    )
    backoff_max: PositiveFloat = Field(
        1800.0, description="`serve`: the longest wait before a failed entry is tried again."
    )
    heartbeat_timeout: PositiveFloat = Field(
        60.0, description="`serve`: `/healthz` fails when the scheduler has not ticked this long."
    )
    http_header_timeout: PositiveFloat = Field(
        5.0,
        description="`serve`: seconds an HTTP client gets to send a request's headers, from "
        "connecting or from the previous answer; a slower connection is closed.",
    )
    http_max_connections: PositiveInt = Field(
        100,
        description="`serve`: open connections of the HTTP server; past it a new connection "
        "displaces the oldest one that has not sent a request yet, or is closed at once.",
    )

    leader_elect: bool = Field(
        False,
        description="`serve`: publish only while holding a `coordination.k8s.io/v1` Lease "
        "(`lease_name`); other replicas are ready and idle (docs/scaling.md).",
    )
    shards: int = Field(
        0,
        ge=0,
        le=1024,
        description="`serve`: split the catalog into this many shards, one Lease each, shared by "
        "the replicas (at most ceil(shards/replicas) each); implies `leader_elect`; 0: none.",
    )
    lease_name: str = Field(
        "containerdisks",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$",
        description="`serve`: the Lease's name (with `shards`: its prefix, `-shard-<i>`).",
    )
    lease_namespace: str = Field(
        "",
        description="`serve`: the Leases' namespace; empty: the pod's own (the service "
        "account's namespace file), else `default`.",
    )
    lease_duration: PositiveFloat = Field(
        15.0, description="`serve`: seconds a replica waits before taking an unrenewed Lease."
    )
    lease_renew_deadline: PositiveFloat = Field(
        10.0,
        description="`serve`: seconds after its last renew a holder stops starting work "
        "(below `lease_duration`).",
    )
    lease_retry_period: PositiveFloat = Field(
        2.0, description="`serve`: seconds between Lease rounds (below `lease_renew_deadline`)."
    )

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        parse_listen(v)
        return v

    @model_validator(mode="after")
    def _lease_durations_in_order(self) -> Self:
        if not self.lease_retry_period < self.lease_renew_deadline < self.lease_duration:
            raise ValueError(
                "lease durations must be lease_retry_period < lease_renew_deadline < "
                f"lease_duration (got {self.lease_retry_period} < {self.lease_renew_deadline} "
                f"< {self.lease_duration})"
            )
        return self

    @property
    def elects(self) -> bool:
        """`serve` takes Leases before it publishes."""
        return self.leader_elect or self.shards > 0


class DocsSettings(BaseModel):
    """`docs publish`: the Quay namespace and API."""

    docs_registry: str = Field(
        "quay.io/containerdisks",
        description="`docs publish` (flag `--registry`): the Quay namespace, `quay.io/<org>`, "
        "whose repository descriptions are written.",
    )
    quay_token_file: Path | None = Field(
        None,
        description="`docs publish`: file holding the Quay OAuth token (required with "
        "`--dry-run=false`; never read in a dry run, never shown).",
    )
    quay_api_url: str = Field(
        "https://quay.io",
        description="`docs publish`: base URL of the Quay API (another Quay, or a local test "
        "server).",
    )


class OutputSettings(BaseModel):
    """What the commands write: the plan format and the log."""

    output: Literal["table", "json"] = Field("table", description="Format of plans on stdout.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level of log events on stderr."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`json` lines, readable `console`, or `auto` (console on a terminal)."
    )
    progress_interval: PositiveFloat = Field(
        10.0,
        description="Seconds between two `progress` log events of one transfer, when no "
        "progress bars are drawn (JSON logs, or no terminal).",
    )


class Settings(
    RunSettings,
    RegistrySettings,
    UpstreamSettings,
    ConnectionSettings,
    ImageSettings,
    VerifySettings,
    DaemonSettings,
    DocsSettings,
    OutputSettings,
    BaseSettings,
):
    """All settings, one flat object (`settings.max_image_bytes`) made of the groups above.

    Field docs are the user documentation (docs/settings.md is checked, and orders its tables by
    the same groups).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_data = _FILE_LAYER.get(settings_cls, {})
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_data))


def parse_listen(spec: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port); raises ValueError."""
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{spec!r}: write an IPv6 address as [ADDRESS]:PORT")
    return host, int(port)


# The file layer is handed to `settings_customise_sources` through this map, keyed by the class
# being built; `load_settings` builds a private subclass per call so calls never interfere.
_FILE_LAYER: dict[type[BaseSettings], dict[str, Any]] = {}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read the YAML config file; an unreadable or malformed file is a `ConfigError`."""
    try:
        data = read_yaml_file(path)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    except YamlFileError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def load_settings(
    flags: dict[str, Any] | None = None,
    file_data: dict[str, Any] | None = None,
    *,
    file_name: str = "config file",
    extra_mirrors: dict[str, str] | None = None,
    sharded: bool = False,
) -> Settings:
    """Layer defaults < file < environment < flags, then add flag mirrors to the table.

    `sharded`: the command publishes a shard (`images push`, `serve`): an Indexed Job's shard is
    resolved and the default results file named after it. Other commands leave both alone, so
    a pipeline's `CONTAINERDISKS_SHARD_COUNT` does not change what verify or promote read."""
    _check_environment_json()
    file_settings = {k: v for k, v in (file_data or {}).items() if k not in CATALOG_KEYS}
    unknown = sorted(set(file_settings) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"{file_name}: unknown setting {unknown[0]!r}")
    layered = type("LayeredSettings", (Settings,), {})
    _FILE_LAYER[layered] = file_settings
    try:
        settings: Settings = layered(**(flags or {}))
    except ValidationError as e:
        raise ConfigError(_one_line(e, flags or {}, file_settings, file_name)) from None
    except SettingsError as e:  # the environment layer's own parsing; checked above, in case
        field = re.search(r'field "([a-z_]+)"', str(e))
        where = f"environment variable {ENV_PREFIX}{field[1].upper()}" if field else "environment"
        raise ConfigError(f"invalid {where}: {' '.join(str(e.__cause__ or e).split())}") from None
    finally:
        _FILE_LAYER.pop(layered, None)
    if extra_mirrors:
        mirrors = {**settings.upstream_mirrors, **extra_mirrors}
        settings = settings.model_copy(update={"upstream_mirrors": mirrors})
    return _with_shard(settings) if sharded else settings


def _with_shard(settings: Settings) -> Settings:
    """An Indexed Job's shard (`shard_count` and $JOB_COMPLETION_INDEX) when no `shard` was
    given, and a sharded run's default results file name (`results-I-of-N.json`)."""
    given = settings.model_fields_set
    shard = settings.shard
    if not shard and settings.shard_count:
        index = os.environ.get(JOB_INDEX_VARIABLE)
        count = settings.shard_count
        if index is None:
            raise ConfigError(
                f"setting 'shard_count' is {count} but {JOB_INDEX_VARIABLE} is not set "
                "(run in an Indexed Job, or give --shard I/N)"
            )
        if not (index.isascii() and index.isdigit() and len(index) <= 5 and int(index) < count):
            raise ConfigError(
                f"invalid environment variable {JOB_INDEX_VARIABLE} {index[:20]!r}: expected an "
                f"index from 0 to {count - 1} (setting 'shard_count' is {count})"
            )
        shard = f"{int(index)}/{count}"
    if not shard:
        return settings
    update: dict[str, Any] = {"shard": shard}
    if "results_file" not in given:
        i, n = parse_shard(shard)
        update["results_file"] = settings.results_file.with_name(f"results-{i}-of-{n}.json")
    return settings.model_copy(update=update)


def _check_environment_json() -> None:
    """A table or list setting in the environment is JSON; one line naming the variable when it
    is not (pydantic-settings would end the command with a traceback)."""
    env = {k.upper(): v for k, v in os.environ.items()}  # names are case-insensitive
    for name, field in Settings.model_fields.items():
        var = ENV_PREFIX + name.upper()
        if var not in env or get_origin(field.annotation) not in (dict, list, set, tuple):
            continue
        try:
            json.loads(env[var])
        except json.JSONDecodeError as e:
            where = f"invalid environment variable {var}"
            raise ConfigError(f"{where}: not JSON at character {e.pos}: {e.msg}") from None
        except RecursionError:
            raise ConfigError(
                f"invalid environment variable {var}: JSON nested too deeply"
            ) from None


#: Settings whose flag is not spelled like the field (medius's `images verify` flags).
_FLAG_NAMES = {
    "verify_registry": "registry",
    "verify_local": "local",
    "verify_timeout": "timeout",
    "verify_firmware": "firmware",
    "verify_accel": "accel",
    "verify_namespace": "namespace",
    "docs_registry": "registry",
}


def _one_line(
    e: ValidationError, flags: dict[str, Any], file_settings: dict[str, Any], file_name: str
) -> str:
    err = e.errors()[0]
    if not err["loc"]:  # a rule across settings
        return f"invalid settings: {err['msg'].removeprefix('Value error, ')}"
    field = str(err["loc"][0])
    if field in flags:
        where = f"flag --{_FLAG_NAMES.get(field, field).replace('_', '-')}"
    elif ENV_PREFIX + field.upper() in os.environ:
        where = f"environment variable {ENV_PREFIX}{field.upper()}"
    elif field in file_settings:
        where = f"{file_name}: setting {field!r}"
    else:
        where = f"setting {field!r}"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
    return f"invalid {where}: {err['msg']}{shown}"
