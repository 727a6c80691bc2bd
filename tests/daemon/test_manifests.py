"""The cluster manifests and the Containerfile agree with the code.

`kubectl --dry-run=client` needs a cluster, so the manifests are parsed with PyYAML and checked
against what the code defines: the probe paths are routes of the server, the port is the one
`listen` binds, every `CONTAINERDISKS_*` variable is a setting whose value validates, the work
dir is a directory in the writable emptyDir (larger than the spool limit), the credentials are a
mounted `kubernetes.io/dockerconfigjson` Secret where `REGISTRY_AUTH_FILE` points, the config is a
ConfigMap where `CONTAINERDISKS_CONFIG` points and it loads, and the pod runs as the image's
non-root user with a read-only root filesystem. The Containerfile is read for the same facts;
that it builds and runs is shown by CI's container stage (.ci/container).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from containerdisks.metrics import Metrics
from containerdisks.server import make_app
from containerdisks.settings import ENV_PREFIX, Settings, load_settings, parse_listen
from containerdisks.status import Status

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "config" / "deploy"

_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def quantity(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", value).groups()  # type: ignore[union-attr]
    return int(number) * (_UNITS[unit] if unit else 1)


def documents() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return documents()


@pytest.fixture(scope="module")
def pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    c: dict[str, Any] = only
    return c


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def mounts_of(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """mountPath -> (volume kind, volume source)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for m in container["volumeMounts"]:
        volume = volumes[m["name"]]
        kind = next(k for k in volume if k != "name")
        out[m["mountPath"]] = (kind, volume[kind])
    return out


def test_every_file_is_a_resource_of_the_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == set(kustomization["resources"])
    assert {"Deployment", "ServiceAccount", "Secret", "Service", "ConfigMap"} == set(documents())


def test_one_replica_recreated_never_two(docs: dict[str, dict[str, Any]]) -> None:
    spec = docs["Deployment"]["spec"]
    assert 1 == spec["replicas"]
    assert "Recreate" == spec["strategy"]["type"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_probes_and_ports_are_the_servers(
    docs: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    app = make_app(Status(heartbeat_timeout=1, dry_run=True), Metrics())
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    (port,) = container["ports"]
    _, listen_port = parse_listen(Settings.model_fields["listen"].default)
    assert (listen_port, "http") == (port["containerPort"], port["name"])
    assert "/healthz" == container["livenessProbe"]["httpGet"]["path"]
    assert "/readyz" == container["readinessProbe"]["httpGet"]["path"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert "http" == container[probe]["httpGet"]["port"]
    service = docs["Service"]["spec"]
    (sport,) = service["ports"]
    assert ("http", listen_port) == (sport["targetPort"], sport["port"])
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert "/metrics" in routes
    assert "/metrics" == docs["Service"]["metadata"]["annotations"]["prometheus.io/path"]


def test_env_is_settings_that_validate_and_publish(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(container)
    ours = {k for k in env if k.startswith(ENV_PREFIX)} - {f"{ENV_PREFIX}CONFIG"}
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert set() == ours - fields
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key in ours:
        monkeypatch.setenv(key, env[key])
    settings = load_settings()
    assert settings.dry_run is False  # the shipped manifests publish
    assert Settings.model_fields["listen"].default == settings.listen
    assert "json" == settings.log_format


def test_mounts_work_dir_config_and_credentials(
    docs: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    env = env_of(container)
    mounts = mounts_of(pod, container)
    # The work dir is a directory of its own (made 0700: the emptyDir itself is root's and 0777)
    # in a size-limited emptyDir, big enough for the largest spool; temp files go there too.
    work = Path(env["CONTAINERDISKS_WORK_DIR"])
    kind, source = mounts[str(work.parent)]
    assert "emptyDir" == kind
    assert int(env["CONTAINERDISKS_MAX_SPOOL_BYTES"]) < quantity(source["sizeLimit"])
    assert env["TMPDIR"] == str(work.parent)
    # Credentials: the dockerconfigjson Secret, mounted where REGISTRY_AUTH_FILE points.
    auth = Path(env["REGISTRY_AUTH_FILE"])
    kind, source = mounts[str(auth.parent)]
    assert "secret" == kind
    secret = docs["Secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert "kubernetes.io/dockerconfigjson" == secret["type"]
    assert auth.name in secret["data"]
    assert "auths" in json.loads(base64.b64decode(secret["data"][auth.name]))
    # The config file: the ConfigMap, mounted where CONTAINERDISKS_CONFIG points, and it loads.
    config = Path(env["CONTAINERDISKS_CONFIG"])
    kind, source = mounts[str(config.parent)]
    assert "configMap" == kind
    configmap = docs["ConfigMap"]
    assert source["name"] == configmap["metadata"]["name"]
    file_data = yaml.safe_load(configmap["data"][config.name])
    settings = load_settings({}, file_data)
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace
    # Read-only mounts for what the daemon must not write.
    read_only = {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")}
    assert {str(auth.parent), str(config.parent)} == read_only
    # Whole-volume mounts: the kubelet updates those when the Secret rotates (never a subPath
    # one), and each pass reads the auth file again.
    assert not [m for m in container["volumeMounts"] if "subPath" in m]


def test_non_root_read_only_with_requests(
    docs: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    account = docs["ServiceAccount"]["metadata"]["name"]
    assert account == pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is False


def test_the_containerfile_matches(pod: dict[str, Any], container: dict[str, Any]) -> None:
    text = (ROOT / "Containerfile").read_text()
    instructions = [
        line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"
    ]
    base = next(line for line in instructions if line.startswith("ARG BASE="))
    assert re.fullmatch(r"ARG BASE=docker\.io/library/python:3\.\d+-slim(-\w+)?", base)
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert ["FROM ${BASE} AS build", "FROM ${BASE}"] == froms  # multi-stage, one base
    (user,) = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    (entrypoint,) = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT "))[-1] == "serve"
    assert "EXPOSE 8080" in instructions
    work = env_of(container)["CONTAINERDISKS_WORK_DIR"]
    assert f"CONTAINERDISKS_WORK_DIR={work}" in text
    writable = Path(work).parent  # the emptyDir's mount point; made the user's in the image
    assert f"WORKDIR {writable}" in instructions
    assert f"HOME={writable}" in text
    assert f"chown 65532:65532 {writable}" in text
