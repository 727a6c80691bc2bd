"""The sharded Job manifests (config/deploy/jobs/) agree with the code and with config/deploy.

`kubectl create --dry-run=client` needs a cluster's discovery, so the manifests are parsed with
PyYAML and checked against the code: an Indexed Job (and the CronJob's job template, the same
pod) with as many completions as `CONTAINERDISKS_SHARD_COUNT`; the pod's environment, with each
completion index Kubernetes sets, loads as the settings of shard I of N writing
`results-I-of-N.json` into the working directory, the results volume (a ReadWriteMany claim the
kustomization creates); the work dir lies in the emptyDir; the ConfigMap, Secret and
ServiceAccount are config/deploy's. `kubectl kustomize` (offline) builds the kustomization.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from containerdisks.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "config" / "deploy"
JOBS = DEPLOY / "jobs"


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def job_specs() -> dict[str, dict[str, Any]]:
    return {
        "indexed-job.yaml": load(JOBS / "indexed-job.yaml")["spec"],
        "cronjob.yaml": load(JOBS / "cronjob.yaml")["spec"]["jobTemplate"]["spec"],
    }


@pytest.fixture(params=sorted(job_specs()))
def job(request: pytest.FixtureRequest) -> dict[str, Any]:
    spec: dict[str, Any] = job_specs()[request.param]
    return spec


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["template"]["spec"]["containers"]
    c: dict[str, Any] = only
    return c


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_of(job)["env"]}


def volume_at(job: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mounted at `path`."""
    pod = job["template"]["spec"]
    (mount,) = [m for m in container_of(job)["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    v: dict[str, Any] = volume
    return v


def test_the_kinds_and_the_cronjob_runs_the_indexed_jobs_pod() -> None:
    assert "Job" == load(JOBS / "indexed-job.yaml")["kind"]
    cron = load(JOBS / "cronjob.yaml")
    assert ("CronJob", "Forbid") == (cron["kind"], cron["spec"]["concurrencyPolicy"])
    specs = list(job_specs().values())
    assert specs[0]["template"] == specs[1]["template"]


def test_one_pod_per_shard(job: dict[str, Any]) -> None:
    count = int(env_of(job)["CONTAINERDISKS_SHARD_COUNT"])
    assert ("Indexed", count, count) == (
        job["completionMode"],
        job["completions"],
        job["parallelism"],
    )
    assert "Never" == job["template"]["spec"]["restartPolicy"]


def test_each_index_loads_as_its_shard_writing_its_own_results_file(
    job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(job)
    settings_vars = {n for n in env if n.startswith(ENV_PREFIX) and n != "CONTAINERDISKS_CONFIG"}
    assert {n.removeprefix(ENV_PREFIX).lower() for n in settings_vars} <= set(Settings.model_fields)
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX) or key == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(key)
    for name, value in env.items():
        if name in settings_vars:
            monkeypatch.setenv(name, value)
    count = job["completions"]
    seen = []
    for index in range(count):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        settings = load_settings({}, sharded=True)
        assert (index, count) == settings.shard_part
        assert Path(f"results-{index}-of-{count}.json") == settings.results_file
        assert settings.dry_run is False
        seen.append(settings.results_file)
    assert len(set(seen)) == count


def test_results_land_on_the_shared_claim_and_spools_in_the_empty_dir(job: dict[str, Any]) -> None:
    c = container_of(job)
    assert ["--once"] == c["args"]  # the image's ENTRYPOINT is `containerdisks serve`
    results = volume_at(job, c["workingDir"])
    claim = load(JOBS / "results-pvc.yaml")
    assert claim["metadata"]["name"] == results["persistentVolumeClaim"]["claimName"]
    assert ["ReadWriteMany"] == claim["spec"]["accessModes"]
    env = env_of(job)
    work = Path(env["CONTAINERDISKS_WORK_DIR"])
    assert "emptyDir" in volume_at(job, str(work.parent))
    assert Path(c["workingDir"]).parent == work.parent  # the claim is mounted inside it


def test_it_uses_config_deploys_configmap_secret_and_service_account(job: dict[str, Any]) -> None:
    pod = job["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        load(DEPLOY / "configmap.yaml")["metadata"]["name"]
        == volumes["config"]["configMap"]["name"]
    )
    assert (
        load(DEPLOY / "secret.yaml")["metadata"]["name"]
        == volumes["registry-auth"]["secret"]["secretName"]
    )
    assert load(DEPLOY / "serviceaccount.yaml")["metadata"]["name"] == pod["serviceAccountName"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container_of(job)["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_cronjob_and_the_claim() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(JOBS)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = list(yaml.safe_load_all(built))
    assert ["CronJob", "PersistentVolumeClaim"] == sorted(d["kind"] for d in docs)
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "localhost/containerdisks:latest" == c["image"]
