"""The provenance we attach to a published image: an in-toto v1 statement, SLSA provenance v1.

One job: from an entry's upstream artifacts (and how each checksum was trusted, `Evidence`) make
the statement whose subjects are the image's digests (the index or single manifest, and every
per-arch manifest). Signed and attached by registry/attach.py, like the image signature.

Decisions:
- The trust evidence lives here, not in image labels, so existing image digests stay as they are.
- Per arch, one resolved dependency: the canonical upstream URL (before any mirror rewrite),
  its checksum, and in its annotations the arch and the evidence: `openpgp` with the signer's
  primary fingerprint, the signature time and the signed file's URL, or `tls-only`.
- `externalParameters` is the catalog entry as it was built: name, version, arches, source.
- No time and no invocation id anywhere: the same inputs give the same bytes, so a re-run that
  publishes nothing writes nothing. The builder is the tool and its version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from containerdisks import __version__
from containerdisks.api import Artifact
from containerdisks.signing import statement

__all__ = ["BUILDER_ID", "BUILD_TYPE", "SLSA_PREDICATE", "provenance_statement"]

SLSA_PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://containerdisks.kubevirt.io/containerdisk/v1"
BUILDER_ID = "https://containerdisks.kubevirt.io/builder"


def _dependency(artifact: Artifact) -> dict[str, Any]:
    evidence = artifact.evidence
    notes: dict[str, Any] = {"arch": artifact.arch, "evidence": evidence.method}
    if evidence.method == "openpgp":
        notes["fingerprint"] = evidence.fingerprint
        notes["signedAt"] = evidence.signed_at
        notes["signedUrl"] = evidence.signed_url
    return {
        "annotations": notes,
        "digest": {artifact.algorithm: artifact.checksum},
        "uri": artifact.url,
    }


def provenance_statement(
    digests: Sequence[str],
    *,
    name: str,
    version: str,
    source: Mapping[str, Any],
    artifacts: Sequence[Artifact],
) -> bytes:
    """The SLSA provenance v1 statement about `digests` (top first), built from `artifacts`."""
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "entry": {
                    "arches": [a.arch for a in artifacts],
                    "name": name,
                    "source": json.loads(json.dumps(dict(source), default=str)),
                    "version": version,
                }
            },
            "resolvedDependencies": [_dependency(a) for a in artifacts],
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"containerdisks": __version__}},
        },
    }
    return statement(list(digests), SLSA_PREDICATE, predicate)
