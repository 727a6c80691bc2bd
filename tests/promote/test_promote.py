"""`images promote` as a real process between real registries, read back by skopeo.

The staged images are put into the source registry by skopeo from hand-made layouts
(tests/support/images.py), independent of our image code; the results file is what verify
writes: stage `verify`, the tags in medius's order, and the digest verify booted.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.images import ArchImage, seeded_layout, skopeo_push, write_layout
from tests.support.registry import Registry, start_registry

STAMP = "42-2512061200"


def digest_of(reg: Registry, repo: str, ref: str) -> str:
    return "sha256:" + hashlib.sha256(reg.inspect_raw(repo, ref)).hexdigest()


def stage(
    tmp: Path, host: str, repo: str, seed: str, tags: list[str], *, docker: bool = True
) -> None:
    """Push a two-arch image made from `seed` to `host/repo` under every tag (Docker media
    types, as medius publishes, unless `docker` is false)."""
    layout = seeded_layout(tmp / f"layout-{seed}", seed)
    skopeo_push(layout, "t", f"{host}/{repo}", docker_types=docker, extra_tags=tuple(tags))


def verified(tags: list[str], digest: str | None, name: str = "fedora") -> dict[str, object]:
    record: dict[str, object] = {"Tags": [f"{name}:{t}" for t in tags], "Stage": "verify"}
    if digest is not None:
        record["Digest"] = digest
    return record


def promote_argv(tmp: Path, source: str, target: str | None, *extra: str) -> list[str]:
    """`images promote`; `target` None leaves `--target-registry` out (its default)."""
    target_flag = [] if target is None else ["--target-registry", target]
    return [
        sys.executable,
        "-m",
        "containerdisks",
        "images",
        "promote",
        "--source-registry",
        source,
        *target_flag,
        "--results-file",
        str(tmp / "results.json"),
        "--log-format",
        "json",
        *extra,
    ]


def promote(
    tmp: Path, source: str, target: str | None, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        promote_argv(tmp, source, target, *extra),
        capture_output=True,
        text=True,
        timeout=120,
        env=env or clean_env(),
        cwd=tmp,
    )


def write_results(tmp: Path, data: dict[str, object]) -> None:
    (tmp / "results.json").write_text(json.dumps(data))


def read_results(tmp: Path) -> dict[str, dict[str, object]]:
    return json.loads((tmp / "results.json").read_text())  # type: ignore[no-any-return]


def blob_uploads(reg: Registry, repo: str) -> list[str]:
    """Registry log lines of blob upload requests (PATCH / PUT of an upload) into `repo`."""
    pattern = re.compile(rf"(PATCH|PUT) /v2/{re.escape(repo)}/blobs/uploads/")
    return [line for line in reg.log_text().splitlines() if pattern.search(line)]


def manifest_puts(reg: Registry, repo: str) -> list[str]:
    """The references of manifest PUTs into `repo`, in the order the registry logged them."""
    pattern = re.compile(rf'"PUT /v2/{re.escape(repo)}/manifests/([^ ?"]+)')
    return [m.group(1) for m in pattern.finditer(reg.log_text())]


@dataclass
class _Promoted:
    """One promote between two registries, done once for the tests that read its outcome."""

    tmp: Path
    src: Registry
    dst: Registry
    tags: list[str]
    digest: str  # what verify booted: staging/fedora:42
    centos: str  # staging/centos-stream:9, found in the source (no Digest in the results)
    done: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Promoted]:
    tmp_path = tmp_path_factory.mktemp("promoted")
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        tags = [STAMP, "42-1.1", "42", "latest"]
        stage(tmp_path, src.host, "staging/fedora", "f42", tags)
        stage(tmp_path, src.host, "staging/centos-stream", "c9", ["9-2512061200", "9"])
        digest = digest_of(src, "staging/fedora", "42")
        centos = digest_of(src, "staging/centos-stream", "9")
        write_results(
            tmp_path,
            {
                "fedora:42": verified(tags, digest),
                # as medius writes it: no Digest, Tags[0] is resolved in the source
                "centos-stream:9": verified(["9-2512061200", "9"], None, "centos-stream"),
                "ubuntu:24.04": {"Stage": "push", "Err": "upstream down"},
            },
        )
        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--dry-run=false")
        # ubuntu failed at push: the verified entries are promoted, and the run exits 1 for the
        # earlier stage's failure, as medius does (--no-fail would make it 0)
        assert done.returncode == 1, done.stderr
        assert '"event": "failed_in_earlier_stage"' in done.stderr
        assert "ubuntu:24.04 (push)" in done.stderr
        yield _Promoted(tmp_path, src, dst, tags, digest, centos, done)


def test_promote_copies_every_tag_by_the_verified_digest(promoted: _Promoted) -> None:
    dst, digest = promoted.dst, promoted.digest
    for tag in promoted.tags:
        assert digest_of(dst, "prod/fedora", tag) == digest
    assert sorted(dst.list_tags("prod/fedora")) == sorted(promoted.tags)
    assert digest_of(dst, "prod/centos-stream", "9") == promoted.centos
    # every child manifest and blob is there: skopeo reads it all back (a Docker list
    # cannot go into an OCI layout unconverted, hence no --preserve-digests)
    back = f"oci:{promoted.tmp / 'back'}:x"
    dst.pull("prod/fedora", digest, back, preserve_digests=False)
    assert "promoted" in promoted.done.stdout


def test_promote_rewrites_the_results_of_promoted_entries_only(promoted: _Promoted) -> None:
    results = read_results(promoted.tmp)
    assert results["fedora:42"] == {
        "Tags": [f"fedora:{t}" for t in promoted.tags],
        "Stage": "promote",
        "Digest": promoted.digest,
    }
    assert results["centos-stream:9"]["Stage"] == "promote"
    assert results["centos-stream:9"]["Digest"] == promoted.centos
    assert results["ubuntu:24.04"] == {"Stage": "push", "Err": "upstream down"}


def test_promote_streams_blobs_into_another_registry_never_mounts(promoted: _Promoted) -> None:
    assert blob_uploads(promoted.dst, "prod/fedora")
    assert "mount=" not in promoted.dst.log_text()


def test_promote_writes_manifests_by_digest_before_the_tags_in_order(
    promoted: _Promoted,
) -> None:
    tags = promoted.tags
    refs = manifest_puts(promoted.dst, "prod/fedora")
    assert refs[-len(tags) :] == tags
    assert refs[: -len(tags)][-1] == promoted.digest  # the index after its children
    assert all(r.startswith("sha256:") for r in refs[: -len(tags)])


def image_blobs(reg: Registry, repo: str, digest: str) -> tuple[set[str], set[str]]:
    """(configs, layers) of the image `repo@digest`, an index or a list of arch manifests, as
    skopeo reads them."""
    configs: set[str] = set()
    layers: set[str] = set()
    for child in json.loads(reg.inspect_raw(repo, digest))["manifests"]:
        manifest = json.loads(reg.inspect_raw(repo, child["digest"]))
        configs.add(manifest["config"]["digest"])
        layers.update(layer["digest"] for layer in manifest["layers"])
    return configs, layers


def committed_uploads(log: str, repo: str) -> list[str]:
    """The digests of blob uploads into `repo` committed in `log` (`PUT ...?digest=`)."""
    pattern = re.compile(
        rf'"PUT /v2/{re.escape(repo)}/blobs/uploads/[^ "]*digest=sha256(?::|%3A)([0-9a-f]{{64}})'
    )
    return ["sha256:" + m.group(1) for m in pattern.finditer(log)]


def test_blobs_the_target_already_has_are_not_uploaded_again(tmp_path: Path) -> None:
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        tags = [STAMP, "42"]
        stage(tmp_path, src.host, "staging/fedora", "f42", tags)
        digest = digest_of(src, "staging/fedora", "42")
        configs, layers = image_blobs(src, "staging/fedora", digest)
        assert len(configs) == len(layers) == 2
        # prod already serves an image with the same disks (so the same layer blobs) but other
        # configs, hence other manifests: only the layers are present, nothing else is
        same_disks = [
            ArchImage(arch, "0" * 64, "https://x/other", disk=f"{arch} f42".encode())
            for arch in ("amd64", "arm64")
        ]
        write_layout(tmp_path / "layout-other", "t", same_disks, index=True)
        skopeo_push(tmp_path / "layout-other", "t", f"{dst.host}/prod/fedora", extra_tags=("41",))
        other = digest_of(dst, "prod/fedora", "41")
        other_configs, other_layers = image_blobs(dst, "prod/fedora", other)
        assert other_layers == layers  # the premise: the layers are there, no config is
        assert not other_configs & configs
        write_results(tmp_path, {"fedora:42": verified(tags, digest)})
        before = len(dst.log_text())

        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--dry-run=false")

        assert done.returncode == 0, done.stderr
        assert "0 mounted, 2 copied, 2 present" in done.stdout
        log = dst.log_text()[before:]
        # each present layer was asked for (HEAD) and never uploaded: the only commits are
        # the two configs, and no upload session was opened beyond theirs
        for layer in layers:
            assert f'"HEAD /v2/prod/fedora/blobs/{layer}' in log
        assert sorted(committed_uploads(log, "prod/fedora")) == sorted(configs)
        assert len(re.findall(r'"POST /v2/prod/fedora/blobs/uploads/', log)) == 2
        for tag in tags:
            assert digest_of(dst, "prod/fedora", tag) == digest
        assert digest_of(dst, "prod/fedora", "41") == other
        dst.pull("prod/fedora", digest, f"oci:{tmp_path / 'back'}:x", preserve_digests=False)


def test_promote_within_one_registry_mounts_every_blob(tmp_path: Path, registry: Registry) -> None:
    tags = [STAMP, "42"]
    stage(tmp_path, registry.host, "staging/fedora", "f42", tags)
    digest = digest_of(registry, "staging/fedora", "42")
    write_results(tmp_path, {"fedora:42": verified(tags, digest)})
    before = len(registry.log_text())

    done = promote(tmp_path, f"{registry.host}/staging", f"{registry.host}/prod", "--dry-run=false")

    assert done.returncode == 0, done.stderr
    for tag in tags:
        assert digest_of(registry, "prod/fedora", tag) == digest
    log = registry.log_text()[before:]
    mounts = re.findall(r'"POST /v2/prod/fedora/blobs/uploads/\?[^"]*mount=', log)
    assert len(mounts) == 4  # two arches: a config and a layer each
    assert blob_uploads(registry, "prod/fedora") == []
    assert "4 mounted, 0 copied" in done.stdout


def test_dry_run_copies_nothing_and_writes_no_results(tmp_path: Path) -> None:
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        stage(tmp_path, src.host, "staging/fedora", "f42", [STAMP, "42"])
        digest = digest_of(src, "staging/fedora", "42")
        write_results(
            tmp_path,
            {
                "fedora:42": verified([STAMP, "42"], digest),
                "centos-stream:9": verified(["9"], "sha256:" + "0" * 64, "centos-stream"),
            },
        )
        before = (tmp_path / "results.json").read_bytes()

        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--focus", "fedora:42")

        assert done.returncode == 0, done.stderr
        assert "would copy" in done.stdout
        assert digest in done.stdout
        # not focused: not listed, and not even looked up in the source
        assert "centos-stream" not in done.stdout
        assert "/v2/staging/centos-stream/" not in src.log_text()
        assert "HEAD /v2/staging/fedora/manifests/42" in src.log_text()  # fedora was
        assert (tmp_path / "results.json").read_bytes() == before
        assert "/v2/prod/" not in dst.log_text()


def test_a_moved_staging_tag_fails_that_entry_only(tmp_path: Path) -> None:
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        stage(tmp_path, src.host, "staging/fedora", "f42", [STAMP, "42"])
        stage(tmp_path, src.host, "staging/centos-stream", "c9", ["9-2512061200", "9"])
        verified_digest = digest_of(src, "staging/fedora", "42")
        centos = digest_of(src, "staging/centos-stream", "9")
        write_results(
            tmp_path,
            {
                "fedora:42": verified([STAMP, "42"], verified_digest),
                "centos-stream:9": verified(["9-2512061200", "9"], centos, "centos-stream"),
            },
        )
        stage(tmp_path, src.host, "staging/fedora", "f42-rebuilt", ["42"])  # after verify
        moved = digest_of(src, "staging/fedora", "42")
        assert moved != verified_digest

        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--dry-run=false")

        assert done.returncode == 1
        results = read_results(tmp_path)
        err = str(results["fedora:42"]["Err"])
        assert err == (
            f"fedora:42: staging tag {src.host}/staging/fedora:42 moved since verify: "
            f"now {moved}, verified {verified_digest}"
        )
        assert results["fedora:42"]["Stage"] == "promote"
        assert "/v2/prod/fedora/" not in dst.log_text()
        assert digest_of(dst, "prod/centos-stream", "9") == centos
        assert "Err" not in results["centos-stream:9"]

        again = promote(
            tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--dry-run=false", "--no-fail"
        )
        assert again.returncode == 0, again.stderr
        assert "moved since verify" in again.stdout


@dataclass
class _World:
    src: Registry
    dst: Registry
    proxy: FaultProxy  # in front of dst
    tags: list[str]
    old: str  # what prod/fedora:42 pointed at before
    old_tags: list[str]
    digest: str  # the verified digest in staging


@contextmanager
def _prod_behind_a_proxy(tmp_path: Path) -> Iterator[_World]:
    """Staging holds fedora:42 (verified, in the results file); prod serves an older 42 and
    is reached through a fault proxy."""
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
        FaultProxy(dst.url) as proxy,
    ):
        tags = [STAMP, "42"]
        stage(tmp_path, dst.host, "prod/fedora", "old", ["42"])  # what prod serves today
        old = digest_of(dst, "prod/fedora", "42")
        old_tags = sorted(dst.list_tags("prod/fedora"))
        stage(tmp_path, src.host, "staging/fedora", "f42", tags)
        digest = digest_of(src, "staging/fedora", "42")
        write_results(tmp_path, {"fedora:42": verified(tags, digest)})
        yield _World(src, dst, proxy, tags, old, old_tags, digest)


def test_a_staging_tag_moved_during_the_copy_fails_the_entry_and_moves_no_tag(
    tmp_path: Path,
) -> None:
    """The second staging-tag check, after the copy and before the tags: the tag is re-pushed
    while promote's first blob upload into the target is held by the proxy."""
    with _prod_behind_a_proxy(tmp_path) as w:
        w.proxy.add(Rule("POST", r"^/v2/prod/fedora/blobs/uploads/", "hold"))
        argv = promote_argv(
            tmp_path, f"{w.src.host}/staging", f"{w.proxy.host}/prod", "--dry-run=false"
        )
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
        )
        try:
            assert w.proxy.wait_held(60), "promote never started its copy"
            # the first check (before the copy) has passed; now the staging tag moves
            stage(tmp_path, w.src.host, "staging/fedora", "f42-rebuilt", ["42"])
            moved = digest_of(w.src, "staging/fedora", "42")
            w.proxy.release()
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

        assert moved != w.digest
        assert proc.returncode == 1, stderr
        record = read_results(tmp_path)["fedora:42"]
        assert record["Err"] == (
            f"fedora:42: staging tag {w.src.host}/staging/fedora:42 moved since verify: "
            f"now {moved}, verified {w.digest}"
        )
        assert record["Stage"] == "promote"
        assert "moved since verify" in stdout
        # the copy did run (manifests went up by digest) and then no tag was written
        puts = [e.path for e in w.proxy.log if e.method == "PUT" and "/manifests/" in e.path]
        assert puts
        assert all("/manifests/sha256:" in p for p in puts), puts
        assert digest_of(w.dst, "prod/fedora", "42") == w.old
        assert sorted(w.dst.list_tags("prod/fedora")) == w.old_tags


def test_a_fault_mid_promote_moves_no_tag_and_a_rerun_completes(tmp_path: Path) -> None:
    with _prod_behind_a_proxy(tmp_path) as w:
        # every blob upload into prod is cut after its first bytes, through every retry
        w.proxy.add(
            Rule("PATCH", r"/v2/prod/fedora/blobs/uploads/", "reset", after_bytes=1, times=None)
        )
        w.proxy.add(
            Rule("PUT", r"/v2/prod/fedora/blobs/uploads/", "reset", after_bytes=1, times=None)
        )
        env = clean_env(CONTAINERDISKS_RETRIES="2")

        failed = promote(
            tmp_path, f"{w.src.host}/staging", f"{w.proxy.host}/prod", "--dry-run=false", env=env
        )

        assert failed.returncode == 1, failed.stderr
        err = str(read_results(tmp_path)["fedora:42"]["Err"])
        assert err.startswith(f"fedora:42: promote to {w.proxy.host}/prod/fedora: "), err
        assert "\n" not in err
        assert digest_of(w.dst, "prod/fedora", "42") == w.old
        assert sorted(w.dst.list_tags("prod/fedora")) == w.old_tags  # no timestamp tag either
        assert not [e for e in w.proxy.log if "/manifests/" in e.path and e.method == "PUT"]

        w.proxy.clear_rules()
        done = promote(
            tmp_path, f"{w.src.host}/staging", f"{w.proxy.host}/prod", "--dry-run=false", env=env
        )

        assert done.returncode == 0, done.stderr
        for tag in w.tags:
            assert digest_of(w.dst, "prod/fedora", tag) == w.digest
        assert read_results(tmp_path)["fedora:42"] == {
            "Tags": [f"fedora:{t}" for t in w.tags],
            "Stage": "promote",
            "Digest": w.digest,
        }


@pytest.mark.parametrize("how", ["config file", "environment"])
def test_push_target_registry_is_never_promotes_target(
    tmp_path: Path, registry: Registry, how: str
) -> None:
    """`target_registry` is where `images push` writes (staging). Set in a config file or the
    environment, it must not become promote's target (which would copy staging into itself):
    without --target-registry the target is quay.io/containerdisks."""
    staging = f"{registry.host}/staging"
    stage(tmp_path, registry.host, "staging/fedora", "f42", [STAMP, "42"])
    digest = digest_of(registry, "staging/fedora", "42")
    write_results(tmp_path, {"fedora:42": verified([STAMP, "42"], digest)})
    no_auth = tmp_path / "no-auth"  # no credentials of this machine's user are looked at
    no_auth.mkdir()
    env = clean_env(
        REGISTRY_AUTH_FILE=str(no_auth / "auth.json"),
        XDG_RUNTIME_DIR=str(no_auth),
        DOCKER_CONFIG=str(no_auth),
    )
    extra: list[str] = []
    if how == "config file":
        (tmp_path / "config.yaml").write_text(f"target_registry: {staging}\n")
        extra = ["--config", str(tmp_path / "config.yaml")]
    else:
        env["CONTAINERDISKS_TARGET_REGISTRY"] = staging
    before = len(registry.log_text())

    done = promote(tmp_path, staging, None, *extra, env=env)  # a dry run

    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == ["ENTRY", "DIGEST", "TARGET", "RESULT"]
    assert rows[1][:3] == ["fedora:42", digest, "quay.io/containerdisks/fedora"]
    assert len(rows) == 2
    # the dry run read the staging tags and wrote nothing into staging
    log = registry.log_text()[before:]
    assert "HEAD /v2/staging/fedora/manifests/42" in log
    assert not re.search(r'"(PUT|POST|PATCH|DELETE) /v2/', log)


@pytest.mark.parametrize("target", ["{host}/staging", "{host}/staging/", "oci:{tmp}/same"])
def test_a_target_that_is_the_source_is_a_usage_error(
    tmp_path: Path, registry: Registry, target: str
) -> None:
    spec = target.format(host=registry.host, tmp=tmp_path)
    source = spec.removesuffix("/") if not spec.startswith("oci:") else f"oci:{tmp_path}/x/../same"
    write_results(tmp_path, {"fedora:42": verified([STAMP], "sha256:" + "0" * 64)})
    before = len(registry.log_text())

    done = promote(tmp_path, source, spec, "--dry-run=false")

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"containerdisks: images promote: the target registry {spec} is --source-registry "
        f"{source}; promote copies staging elsewhere, not into itself"
    )
    assert done.stdout == ""
    assert registry.log_text()[before:].count("/v2/") == 0


def test_a_missing_results_file_is_a_usage_error(tmp_path: Path, registry: Registry) -> None:
    done = promote(tmp_path, f"{registry.host}/staging", f"{registry.host}/prod")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"containerdisks: results file {tmp_path / 'results.json'} does not exist "
        "(run `images push` first)"
    )


def test_promote_into_and_out_of_an_oci_directory(tmp_path: Path, registry: Registry) -> None:
    tags = [STAMP, "42"]
    stage(tmp_path, registry.host, "staging/fedora", "f42", tags, docker=False)
    stage(tmp_path, registry.host, "staging/centos-stream", "c9", ["9"])  # Docker types
    digest = digest_of(registry, "staging/fedora", "42")
    centos = digest_of(registry, "staging/centos-stream", "9")
    write_results(
        tmp_path,
        {
            "fedora:42": verified(tags, digest),
            "centos-stream:9": verified(["9"], centos, "centos-stream"),
        },
    )
    out = tmp_path / "out"

    done = promote(tmp_path, f"{registry.host}/staging", f"oci:{out}", "--dry-run=false")

    assert done.returncode == 1, done.stderr
    assert read_results(tmp_path)["centos-stream:9"]["Err"] == (
        f"centos-stream:9: oci:{out} holds OCI media types only, and {centos} is "
        "application/vnd.docker.distribution.manifest.list.v2+json "
        "(promote copies by digest, it never converts)"
    )
    assert not (out / "centos-stream").exists()
    for tag in tags:
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{out}/fedora:{tag}"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--all", f"oci:{out}/fedora:42", f"dir:{tmp_path / 'back'}"],
        capture_output=True,
        check=True,
        timeout=60,
    )

    # and back out of the directory into a registry: an oci: source works the same way
    write_results(tmp_path, {"fedora:42": verified(tags, digest)})
    again = promote(tmp_path, f"oci:{out}", f"{registry.host}/prod", "--dry-run=false")
    assert again.returncode == 0, again.stderr
    for tag in tags:
        assert digest_of(registry, "prod/fedora", tag) == digest


def _events(stderr: str, name: str) -> list[dict[str, object]]:
    found = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


def test_an_entry_an_earlier_stage_failed_fails_promote_as_in_medius(tmp_path: Path) -> None:
    """medius's promote ends with an error on an entry whose `Err` is set; here the others are
    promoted, the run exits 1 (0 with --no-fail), one line names the entries, and their
    records stay as they were."""
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        stage(tmp_path, src.host, "staging/fedora", "f42", [STAMP, "42"])
        digest = digest_of(src, "staging/fedora", "42")
        failed_push = {"Stage": "push", "Err": "debian:13: upstream: HTTP 404"}
        failed_verify = {"Tags": ["ubuntu:24.04"], "Stage": "verify", "Err": "ubuntu:24.04: no SSH"}
        results = {
            "fedora:42": verified([STAMP, "42"], digest),
            "debian:13": failed_push,
            "ubuntu:24.04": failed_verify,
        }
        write_results(tmp_path, results)

        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--dry-run=false")

        assert 1 == done.returncode, done.stderr
        assert re.search(
            r"debian:13 .*failed: failed in stage push: upstream: HTTP 404", done.stdout
        )
        assert re.search(r"ubuntu:24.04 .*failed: failed in stage verify: no SSH", done.stdout)
        said = _events(done.stderr, "failed_in_earlier_stage")
        assert ["debian:13 (push), ubuntu:24.04 (verify)"] == [e["entries"] for e in said]
        after = read_results(tmp_path)
        assert ("promote", None) == (after["fedora:42"]["Stage"], after["fedora:42"].get("Err"))
        assert failed_push == after["debian:13"]
        assert failed_verify == after["ubuntu:24.04"]

        write_results(tmp_path, {"debian:13": failed_push})
        done = promote(tmp_path, f"{src.host}/staging", f"{dst.host}/prod", "--no-fail")
        assert 0 == done.returncode, done.stderr
        assert 1 == len(_events(done.stderr, "failed_in_earlier_stage"))


def test_promote_of_a_file_at_stage_push_says_why_it_promotes_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    write_results(
        tmp_path,
        {
            "fedora:42": {"Tags": ["fedora:42"], "Stage": "push", "Digest": "sha256:" + "1" * 64},
            "debian:13": {"Tags": ["debian:13"], "Stage": "push"},
        },
    )
    done = promote(tmp_path, f"{registry.host}/staging", f"{registry.host}/prod")
    assert 0 == done.returncode, done.stderr
    (said,) = _events(done.stderr, "nothing_to_promote")
    assert (
        "2 at stage push (pushed, not verified: run images verify first: fedora:42, debian:13)"
        == said["why"]
    )
    assert "/v2/staging/" not in registry.log_text()  # nothing was even looked up
