"""The secrets this process holds, and :func:`redact`, which masks them in any text we emit.

Decision: one process-wide registry, and masking where text leaves the process.

- One registry. A secret is registered where it enters the process: a
  :class:`~containerdisks.oci.auth.Credentials` registers its password, tokens and Basic
  ``user:password`` when it is made (from an auth file, a helper or a tuple), the auth flow its
  tokens when a token service hands them out, the Quay client its token, the KubeVirt verifier
  the cluster's bearer token. It lives in ``containerdisks.oci`` because that package imports
  nothing else of ours, and everything else may import it.
- Outputs are masked at their boundary, not at every f-string: the log renderer, stdout and
  stderr of the command line, the results file, ``/status``, ``/metrics``, and the message of
  every :class:`~containerdisks.oci.errors.OCIError` (which a registry's error body may fill).
- A secret is masked in the forms a server may echo it in: as it is; base64, standard and
  URL-safe, padded or not, and the part of it that stays the same wherever the secret sits in a
  longer base64 text (``Basic`` of ``user:password`` whatever the user name); percent-encoded
  (``%2B``/``%2b``, ``+`` or ``%20`` for a space, ``/`` kept or not), also of its base64; and
  JSON-escaped. Strings shorter than :data:`MIN_LENGTH` are not registered: masking every
  ``abc`` in the output would shred it and hide nothing worth hiding.
- Tokens obtained from a token service are *expiring*: the newest :data:`MAX_EXPIRING` are kept
  (a daemon fetches a new one per scope and pass, forever), whereas credentials stay.
- Masking is one pass over the text with a table of every form by its first
  :data:`MIN_LENGTH` characters, longest form first: its cost grows with the text, not with the
  number of secrets (a regular expression of thousands of 1 KiB tokens compiles for seconds and
  matches slowly).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

__all__ = [
    "MASK",
    "MAX_EXPIRING",
    "MIN_LENGTH",
    "forget_all",
    "forms_of",
    "redact",
    "redact_data",
    "register",
]

#: What a secret is replaced with.
MASK: Final = "***"
#: Strings (and derived forms) shorter than this are not registered.
MIN_LENGTH: Final = 4
#: How many expiring secrets (tokens handed out by token services) are remembered.
MAX_EXPIRING: Final = 1024


def _base64_forms(raw: bytes) -> set[str]:
    """Base64 texts of ``raw``: whole (padded and not), and for each of the three alignments
    ``raw`` can have inside a longer text, the characters that depend only on ``raw``, and
    those up to the end for a text that ends with ``raw`` (as ``user:password`` does)."""
    forms: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        forms.update((whole, whole.rstrip("=")))
        for offset in range(3):
            text = encode(bytes(offset) + raw).decode("ascii")
            start = -(-8 * offset // 6)  # the first character with no bit of the prefix
            end = 8 * (offset + len(raw)) // 6  # past the last one with no bit of what follows
            forms.update((text[start:end], text[start:], text[start:].rstrip("=")))
    return forms


def _percent_forms(text: str) -> set[str]:
    """Percent-encoded spellings of ``text``: upper- and lower-case hex, ``+`` or ``%20`` for a
    space, ``/`` encoded or not."""
    forms = {
        urllib.parse.quote(text, safe=""),
        urllib.parse.quote(text, safe="/"),
        urllib.parse.quote_plus(text, safe=""),
        urllib.parse.quote_plus(text, safe="/"),
    }
    lower = set()
    for form in forms:
        parts = form.split("%")
        lower.add(parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:]))
    return forms | lower


def forms_of(secret: str) -> set[str]:
    """Every spelling of ``secret`` that is masked (those long enough to be masked)."""
    raw = secret.encode("utf-8", "surrogatepass")
    plain = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    encoded = _base64_forms(raw)
    forms = plain | encoded
    for text in plain | encoded:
        forms |= _percent_forms(text)
    return {f for f in forms if len(f) >= MIN_LENGTH}


class _Registry:
    """The registered secrets and, derived from them, the table :func:`redact` reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lasting: dict[str, frozenset[str]] = {}
        self._expiring: OrderedDict[str, frozenset[str]] = OrderedDict()
        #: first MIN_LENGTH characters -> forms with them, longest first; replaced, never changed
        self.table: Mapping[str, tuple[str, ...]] = {}

    def add(self, secret: str, *, expiring: bool) -> None:
        with self._lock:
            if secret in self._lasting:
                return
            if expiring:
                if secret in self._expiring:
                    self._expiring.move_to_end(secret)
                    return
                self._expiring[secret] = frozenset(forms_of(secret))
                while len(self._expiring) > MAX_EXPIRING:
                    self._expiring.popitem(last=False)
            else:
                known = self._expiring.pop(secret, frozenset())
                self._lasting[secret] = known or frozenset(forms_of(secret))
            self._rebuild()

    def clear(self) -> None:
        with self._lock:
            self._lasting.clear()
            self._expiring.clear()
            self._rebuild()

    def _rebuild(self) -> None:
        grouped: dict[str, set[str]] = {}
        for forms in (*self._lasting.values(), *self._expiring.values()):
            for form in forms:
                grouped.setdefault(form[:MIN_LENGTH], set()).add(form)
        self.table = {
            key: tuple(sorted(forms, key=len, reverse=True)) for key, forms in grouped.items()
        }


_registry = _Registry()


def register(secret: str | None, *, expiring: bool = False) -> None:
    """Mask ``secret`` (in all its forms) in everything :func:`redact` sees from now on.

    ``expiring``: a short-lived token; only the newest :data:`MAX_EXPIRING` are remembered.
    Empty and short strings (under :data:`MIN_LENGTH`) are ignored.
    """
    if secret and len(secret) >= MIN_LENGTH:
        _registry.add(secret, expiring=expiring)


def redact(text: str) -> str:
    """``text`` with every registered secret, in any of its forms, replaced by :data:`MASK`."""
    table = _registry.table
    if not table or len(text) < MIN_LENGTH:
        return text
    out: list[str] = []
    done = 0  # text[:done] is in out
    i = 0
    last = len(text) - MIN_LENGTH
    while i <= last:
        candidates = table.get(text[i : i + MIN_LENGTH])
        if candidates is not None:
            for form in candidates:
                if text.startswith(form, i):
                    out.append(text[done:i])
                    out.append(MASK)
                    i = done = i + len(form)
                    break
            else:
                i += 1
        else:
            i += 1
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def redact_data(value: object) -> object:
    """``value`` (JSON-like data: dicts, lists, tuples, strings) with :func:`redact` applied to
    every string in it, keys included; other values are returned as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def forget_all() -> None:
    """Forget every registered secret (for tests, which share one process)."""
    _registry.clear()
