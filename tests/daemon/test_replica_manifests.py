"""config/replicas, the overlay running `serve` as 3 replicas sharing shards (docs/scaling.md),
rendered by kubectl's own kustomize and checked against the code: the replicas' env are
settings that validate and elect, the PodDisruptionBudget selects the pods, and the Role grants
exactly the Lease verbs the replicas use (and kubectl's watch), to the pods' service account."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from containerdisks.settings import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]


def rendered() -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "config" / "replicas")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}


def test_three_replicas_with_shards_a_budget_and_lease_rights(monkeypatch: Any) -> None:
    docs = rendered()
    deployment = docs["Deployment"]["spec"]
    pod = deployment["template"]
    assert 3 == deployment["replicas"]
    assert pod["spec"]["automountServiceAccountToken"] is True
    labels = pod["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()

    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)}
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name != "CONTAINERDISKS_CONFIG":
            monkeypatch.setenv(name, value)
    settings = load_settings({}, {})
    assert (True, 12) == (settings.elects, settings.shards)

    (rule,) = docs["Role"]["rules"]
    assert (["coordination.k8s.io"], ["leases"]) == (rule["apiGroups"], rule["resources"])
    assert {"get", "list", "watch", "create", "update", "patch"} == set(rule["verbs"])
    binding = docs["RoleBinding"]
    assert docs["Role"]["metadata"]["name"] == binding["roleRef"]["name"]
    assert [pod["spec"]["serviceAccountName"]] == [s["name"] for s in binding["subjects"]]
