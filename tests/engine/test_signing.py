"""`images push --sign-key`: what we publish is signed and attested, and others can check it.

Real registry (docker-registry 2.8, no referrers API), real push of the Fedora tree, keys made
by `openssl genpkey`. Everything is read back over plain HTTP with urllib (not our client) and
checked by tools that are not ours: `openssl dgst -sha256 -verify` over the simple-signing
payload and over DSSE's PAE, and the npm Sigstore verifier (`@sigstore/verify`, tests/sigstore)
for the bundles, plus the statement's subject, which that verifier does not bind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env, push
from tests.support.cosign import SIGSTORE, keypair, replace_sig_payload, sigstore_verifier
from tests.support.registry import start_registry

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
COSIGN_SIGN = "https://sigstore.dev/cosign/sign/v1"
SLSA = "https://slsa.dev/provenance/v1"
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def get(url: str) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.read(), dict(r.headers)


def manifest(registry: Any, repo: str, ref: str) -> dict[str, Any]:
    return json.loads(get(f"{registry.url}/v2/{repo}/manifests/{ref}")[0])  # type: ignore[no-any-return]


def digest_of(registry: Any, repo: str, ref: str) -> str:
    data, _ = get(f"{registry.url}/v2/{repo}/manifests/{ref}")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(registry: Any, repo: str, digest: str) -> bytes:
    data, _ = get(f"{registry.url}/v2/{repo}/blobs/{digest}")
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    return data


def openssl_verifies(pub: Path, signature: bytes, data: bytes, tmp: Path) -> bool:
    (tmp / "sig.der").write_bytes(signature)
    (tmp / "data").write_bytes(data)
    r = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp / "sig.der"),
         str(tmp / "data")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.stdout.strip() in {"Verified OK", "Verification failure"}, r.stdout + r.stderr
    return r.returncode == 0


def pae(body: bytes) -> bytes:
    t = b"application/vnd.in-toto+json"
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sigstore_js(pub: Path, bundle: bytes, tmp: Path) -> subprocess.CompletedProcess[str]:
    (tmp / "bundle.json").write_bytes(bundle)
    return subprocess.run(
        ["node", str(sigstore_verifier()), str(pub), str(tmp / "bundle.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def writes(registry: Any) -> int:
    """Requests that change the registry, from its access log."""
    return len(re.findall(r'"(PUT|POST|PATCH|DELETE) /v2/', registry.log_text()))


def test_push_signs_every_digest_both_ways_and_others_verify_it(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    sigstore_verifier()
    srv, _ = fedora
    key = keypair(tmp_path, passphrase="s3cret-pass")
    pub = key.with_suffix(".pub")
    ns = f"{registry.host}/containerdisks"
    env = clean_env(CONTAINERDISKS_SIGN_KEY_PASSPHRASE="s3cret-pass")
    result = push(srv, ns, "--focus", "fedora:40", "--sign-key", str(key), cwd=tmp_path, env=env)
    assert 0 == result.returncode, result.stderr
    assert "s3cret-pass" not in result.stdout + result.stderr

    repo = "containerdisks/fedora"
    top = digest_of(registry, repo, "40")
    index = manifest(registry, repo, "40")
    digests = [top] + [m["digest"] for m in index["manifests"]]
    assert 3 == len(digests)
    for digest in digests:
        stem = digest.replace(":", "-")
        # The tag-based signature: openssl checks the payload bytes as stored.
        sig = manifest(registry, repo, f"{stem}.sig")
        [layer] = sig["layers"]
        assert "application/vnd.dev.cosign.simplesigning.v1+json" == layer["mediaType"]
        payload = blob(registry, repo, layer["digest"])
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        assert openssl_verifies(pub, signature, payload, tmp_path)
        doc = json.loads(payload)
        assert digest == doc["critical"]["image"]["docker-manifest-digest"]
        assert "quay.io/containerdisks/fedora" == doc["critical"]["identity"]["docker-reference"]
        assert None is doc["optional"]
        # The attestation tag: a DSSE envelope whose PAE openssl checks; SLSA provenance.
        att = manifest(registry, repo, f"{stem}.att")
        [layer] = att["layers"]
        assert "https://slsa.dev/provenance/v1" == layer["annotations"]["predicateType"]
        envelope = json.loads(blob(registry, repo, layer["digest"]))
        body = base64.b64decode(envelope["payload"])
        assert openssl_verifies(pub, base64.b64decode(envelope["signatures"][0]["sig"]),
                                pae(body), tmp_path)  # fmt: skip
        statement = json.loads(body)
        assert sorted(d.removeprefix("sha256:") for d in digests) == sorted(
            s["digest"]["sha256"] for s in statement["subject"]
        )
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        assert {"x86_64", "aarch64"} == {d["annotations"]["arch"] for d in deps}
        assert all(d["uri"].startswith("https://") for d in deps)
        assert all(d["annotations"]["evidence"] in {"openpgp", "tls-only"} for d in deps)
        # The referrers tag schema: an index of two bundle referrers, each verified by npm.
        referrers = manifest(registry, repo, stem)
        predicates = set()
        for entry in referrers["manifests"]:
            assert BUNDLE == entry["artifactType"]
            referrer = manifest(registry, repo, entry["digest"])
            assert digest == referrer["subject"]["digest"]
            assert "org.opencontainers.image.created" not in referrer.get("annotations", {})
            bundle = blob(registry, repo, referrer["layers"][0]["digest"])
            checked = sigstore_js(pub, bundle, tmp_path)
            assert 0 == checked.returncode, checked.stderr
            said = json.loads(base64.b64decode(checked.stdout.split()[1]))
            named = [s["digest"]["sha256"] for s in said["subject"]]
            assert digest.removeprefix("sha256:") in named
            predicates.add(said["predicateType"])
        assert {COSIGN_SIGN, SLSA} == predicates

    # Another key: neither openssl nor the npm verifier accepts our signatures.
    other = keypair(tmp_path, "other").with_suffix(".pub")
    sig = manifest(registry, repo, f"{top.replace(':', '-')}.sig")["layers"][0]
    payload = blob(registry, repo, sig["digest"])
    signature = base64.b64decode(sig["annotations"]["dev.cosignproject.cosign/signature"])
    assert not openssl_verifies(other, signature, payload, tmp_path)
    assert not openssl_verifies(pub, signature, payload.replace(b"fedora", b"fedorb"), tmp_path)
    first = manifest(registry, repo, top.replace(":", "-"))["manifests"][0]["digest"]
    bundle = blob(registry, repo, manifest(registry, repo, first)["layers"][0]["digest"])
    refused = sigstore_js(other, bundle, tmp_path)
    assert 1 == refused.returncode
    assert "SIGNATURE_ERROR" in refused.stderr

    # A re-run: the image digest is the same, and not one registry write (deterministic
    # signatures, nothing time-dependent, every tag compared before it is written).
    before = writes(registry)
    again = push(srv, ns, "--focus", "fedora:40", "--sign-key", str(key), cwd=tmp_path, env=env)
    assert 0 == again.returncode, again.stderr
    assert top == digest_of(registry, repo, "40")
    assert before == writes(registry)

    # And a forced rebuild of the same bytes: same digest, same signatures, still no new
    # signature, referrer or index (the image manifests are rewritten, their bytes identical).
    sig_before = digest_of(registry, repo, f"{top.replace(':', '-')}.sig")
    index_before = digest_of(registry, repo, top.replace(":", "-"))
    forced = push(srv, ns, "--focus", "fedora:40", "--sign-key", str(key), "--force", cwd=tmp_path,
                  env=env)  # fmt: skip
    assert 0 == forced.returncode, forced.stderr
    assert top == digest_of(registry, repo, "40")
    assert sig_before == digest_of(registry, repo, f"{top.replace(':', '-')}.sig")
    assert index_before == digest_of(registry, repo, top.replace(":", "-"))
    assert 2 == len(manifest(registry, repo, top.replace(":", "-"))["manifests"])


def test_signing_changes_no_image_digest(tmp_path: Path, registry: Any, fedora: Any) -> None:
    srv, _ = fedora
    key = keypair(tmp_path)
    plain, signed = f"{registry.host}/plain", f"{registry.host}/signed"
    assert 0 == push(srv, plain, "--focus", "fedora:40", cwd=tmp_path).returncode
    r = push(srv, signed, "--focus", "fedora:40", "--sign-key", str(key), cwd=tmp_path)
    assert 0 == r.returncode, r.stderr
    assert digest_of(registry, "plain/fedora", "40") == digest_of(registry, "signed/fedora", "40")


def test_an_unusable_signing_key_is_one_line_and_exit_2(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    key = keypair(tmp_path, passphrase="pp-Right-7Q")
    ns = f"{registry.host}/cd"
    cases = {
        "passphrase": (key, clean_env(CONTAINERDISKS_SIGN_KEY_PASSPHRASE="pp-Wrong-9Z")),
        "CONTAINERDISKS_SIGN_KEY_PASSPHRASE": (key, clean_env()),
        "not a PKCS#8 PEM private key": (key.with_suffix(".pub"), clean_env()),
        "No such file": (tmp_path / "missing.key", clean_env()),
    }
    for expected, (path, env) in cases.items():
        r = push(srv, ns, "--focus", "fedora:40", "--sign-key", str(path), cwd=tmp_path, env=env)
        assert 2 == r.returncode
        lines = r.stderr.strip().splitlines()
        assert 1 == len(lines), r.stderr
        assert expected in lines[0]
        assert str(path) in lines[0]
        assert "pp-Wrong-9Z" not in r.stderr
        assert "pp-Right-7Q" not in r.stderr


def test_verify_signatures_checks_a_registry_alone(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    key = keypair(tmp_path)
    ns = f"{registry.host}/cd"
    signed = push(srv, ns, "--focus", "fedora:40", "--sign-key", str(key), cwd=tmp_path)
    assert 0 == signed.returncode, signed.stderr

    def check(pub: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "containerdisks", "images", "verify-signatures",
             "--registry", ns, "--verify-key", str(pub), "--focus", "fedora:*"],
            capture_output=True, text=True, timeout=120, env=clean_env(),
        )  # fmt: skip

    good = check(key.with_suffix(".pub"))
    assert 0 == good.returncode, good.stdout + good.stderr
    assert f"signed ({ns}/fedora)" not in good.stdout  # identity: where users pull from
    assert "signed (quay.io/containerdisks/fedora)" in good.stdout

    wrong = check(keypair(tmp_path, "other").with_suffix(".pub"))
    assert 1 == wrong.returncode
    [row] = [line for line in wrong.stdout.splitlines() if "failed:" in line]
    assert "does not verify with public key" in row

    # One byte of a stored payload changed (a registry serving other bytes under the tag).
    repo = "cd/fedora"
    top = digest_of(registry, repo, "40")
    sig = manifest(registry, repo, f"{top.replace(':', '-')}.sig")
    _, tampered = replace_sig_payload(
        registry.host, repo, top, lambda b: b.replace(b"quay.io", b"quay.iO")
    )
    assert sig["layers"][0]["digest"] != tampered["layers"][0]["digest"]
    bad = check(key.with_suffix(".pub"))
    assert 1 == bad.returncode
    [row] = [line for line in bad.stdout.splitlines() if "failed:" in line]
    assert f"signature of {top}: does not verify" in row


def _promote(tmp: Path, source: str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    results = json.loads((tmp / "results.json").read_text())
    for record in results.values():
        record["Stage"] = "verify"  # as `images verify` leaves a passed entry
    (tmp / "results.json").write_text(json.dumps(results))
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", "images", "promote", "--dry-run=false",
         "--source-registry", source, "--target-registry", target,
         "--results-file", str(tmp / "results.json"), *extra],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip


def test_promote_carries_signatures_and_they_verify_at_the_target(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    sigstore_verifier()
    srv, _ = fedora
    key = keypair(tmp_path)
    pub = key.with_suffix(".pub")
    staging = f"{registry.host}/staging"
    signed = push(srv, staging, "--focus", "fedora:40", "--sign-key", str(key), cwd=tmp_path)
    assert 0 == signed.returncode, signed.stderr
    with start_registry(tmp_path / "public") as public:
        prod = f"{public.host}/containerdisks"
        r = _promote(tmp_path, staging, prod, "--verify-key", str(pub))
        assert 0 == r.returncode, r.stdout + r.stderr
        assert "signatures and attestations" in r.stdout
        repo = "containerdisks/fedora"
        top = digest_of(public, repo, "40")
        assert digest_of(registry, "staging/fedora", "40") == top
        index = manifest(public, repo, "40")
        for digest in [top] + [m["digest"] for m in index["manifests"]]:
            stem = digest.replace(":", "-")
            layer = manifest(public, repo, f"{stem}.sig")["layers"][0]
            signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
            assert openssl_verifies(pub, signature, blob(public, repo, layer["digest"]), tmp_path)
            assert manifest(public, repo, f"{stem}.att")["layers"]
            entries = manifest(public, repo, stem)["manifests"]
            assert 2 == len(entries)
            for entry in entries:
                referrer = manifest(public, repo, entry["digest"])
                assert digest == referrer["subject"]["digest"]
                bundle = blob(public, repo, referrer["layers"][0]["digest"])
                checked = sigstore_js(pub, bundle, tmp_path)
                assert 0 == checked.returncode, checked.stderr
        # Our own check of the target agrees.
        check = subprocess.run(
            [sys.executable, "-m", "containerdisks", "images", "verify-signatures",
             "--registry", prod, "--verify-key", str(pub), "--focus", "fedora:*"],
            capture_output=True, text=True, timeout=120, env=clean_env(),
        )  # fmt: skip
        assert 0 == check.returncode, check.stdout + check.stderr

        # An unsigned image is refused when a key is configured: one line, nothing copied.
        unsigned = f"{registry.host}/unsigned"
        assert 0 == push(srv, unsigned, "--focus", "fedora:40", cwd=tmp_path).returncode
        refused = _promote(tmp_path, unsigned, f"{public.host}/other", "--verify-key", str(pub))
        assert 1 == refused.returncode
        [row] = [line for line in refused.stdout.splitlines() if "fedora:40" in line]
        assert "refused, not signed with public key" in row
        assert "(unsigned)" in row
        with pytest.raises(urllib.error.HTTPError) as gone:
            get(f"{public.url}/v2/other/fedora/tags/list")
        gone.value.close()
        assert 404 == gone.value.code  # not a blob, not a tag: nothing was copied


def test_the_sigstore_verifier_is_a_skip_with_the_reason_when_npm_cannot_install(
    tmp_path: Path,
) -> None:
    """Real npm, a registry that refuses connections, an empty cache: no node_modules, so the
    tests that need the npm verifier skip and say why (they do not error, and do not pass)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node or npm is absent")
    project = tmp_path / "sigstore"
    project.mkdir()
    for name in ("package.json", "package-lock.json", "verify.js"):
        shutil.copyfile(SIGSTORE / name, project / name)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "npm_config_registry": f"http://127.0.0.1:{port}/",
        "npm_config_cache": str(tmp_path / "npm-cache"),
        "npm_config_fetch_retries": "0",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(pytest.skip.Exception) as skipped:
            sigstore_verifier(project, timeout=120)
    reason = str(skipped.value)
    assert f"{project}/node_modules is absent and `npm ci` failed (exit 1: " in reason
    assert f"ECONNREFUSED 127.0.0.1:{port}" in reason
    assert not (project / "node_modules").exists()
