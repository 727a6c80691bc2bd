"""A FAKE Kubernetes API server on 127.0.0.1 serving `coordination.k8s.io/v1` Leases.

One job: stand in for the API server the replicas of `serve --leader-elect` / `--shards` talk
to, with the real API's semantics for what they use: create (409 AlreadyExists), get, list
(with an equality label selector), update (PUT) with `resourceVersion` optimistic concurrency
(409 Conflict on a stale one; none given: unconditional, as the real API allows for Leases),
and the discovery documents kubectl needs, so `kubectl get lease -o yaml` reads them.

This is a fake, not Kubernetes: no cluster can run here (docs/architecture.md "How it is tested").
Decisions:
- `history` records every successful write on the fake's own monotonic clock (`at`): the
  Lease, its holder, duration and resourceVersion. A test checks from it that no two replicas
  held one Lease at once: a Lease passes from one holder to another only after the first one
  released it or its duration ran out since its last write.
- Writes need the bearer `token`; GETs are anonymous too, as kubectl sends no token over plain
  HTTP. Runs in a thread of its own (`with`), since the replicas are subprocesses.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support.loopback import LoopbackServer

__all__ = ["FakeLeases", "Write"]

_GROUP = "coordination.k8s.io"


@dataclass(frozen=True)
class Write:
    at: float  # the fake's monotonic clock
    namespace: str
    name: str
    holder: str
    duration: int
    version: int


def _status(code: int, reason: str, message: str, name: str = "") -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }  # fmt: skip
    if name:
        body["details"] = {"name": name, "group": _GROUP, "kind": "leases"}
    return web.json_response(body, status=code)


class FakeLeases(LoopbackServer):
    """The fake; `url` is its base, `kubeconfig(path)` writes a kubeconfig for it."""

    name = "fake-leases"

    def __init__(self, *, token: str = "fake-token") -> None:
        super().__init__()
        self.token = token
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[Write] = []
        self.conflicts = 0
        self._version = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config))
        return path

    def holders(self, namespace: str = "default") -> dict[str, str]:
        """Lease name -> its holder now ('' when released)."""
        return {
            name: str(lease["spec"].get("holderIdentity") or "")
            for (ns, name), lease in sorted(self.leases.items())
            if ns == namespace
        }

    def overlaps(self) -> list[str]:
        """Every hand-over in `history` from one holder to another before the first one's
        Lease had run out (or was released): what leader election must never allow."""
        last: dict[tuple[str, str], Write] = {}
        wrong = []
        for w in self.history:
            key = (w.namespace, w.name)
            prev = last.get(key)
            moved = prev is not None and prev.holder and w.holder and w.holder != prev.holder
            if moved and prev is not None and w.at < prev.at + prev.duration:
                wrong.append(
                    f"{w.name}: {w.holder} took it {w.at - prev.at:.2f}s after "
                    f"{prev.holder}'s last write (lease {prev.duration}s)"
                )
            last[key] = w
        return wrong

    async def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/api/v1", self._core_resources)
        app.router.add_get("/apis", self._groups)
        app.router.add_get("/apis/coordination.k8s.io/v1", self._resources)
        app.router.add_get(leases, self._list)
        app.router.add_post(leases, self._create)
        app.router.add_get(leases + "/{name}", self._get)
        app.router.add_put(leases + "/{name}", self._update)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "GET" and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _status(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    # -- discovery (for kubectl) ----------------------------------------------------------------
    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        )  # fmt: skip

    async def _core_resources(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1", "resources": []})

    async def _groups(self, request: web.Request) -> web.Response:
        version = {"groupVersion": f"{_GROUP}/v1", "version": "v1"}
        return web.json_response(
            {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": _GROUP, "versions": [version], "preferredVersion": version}]}
        )  # fmt: skip

    async def _resources(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{_GROUP}/v1",
             "resources": [
                {"name": "leases", "singularName": "lease", "namespaced": True, "kind": "Lease",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                           "update", "watch"]}]}
        )  # fmt: skip

    # -- leases ---------------------------------------------------------------------------------
    def _store(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        meta = body.setdefault("metadata", {})
        meta.update(namespace=ns, name=name, resourceVersion=str(self._version))
        body["apiVersion"], body["kind"] = f"{_GROUP}/v1", "Lease"
        self.leases[(ns, name)] = body
        spec = body.get("spec") or {}
        self.history.append(
            Write(time.monotonic(), ns, name, str(spec.get("holderIdentity") or ""),
                  int(spec.get("leaseDurationSeconds") or 0), self._version)
        )  # fmt: skip
        return body

    async def _create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await request.json()
        name = str((body.get("metadata") or {}).get("name") or "")
        if not name:
            return _status(422, "Invalid", "Lease.coordination.k8s.io is invalid: metadata.name")
        if (ns, name) in self.leases:
            return _status(
                409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists', name
            )
        body.setdefault("metadata", {}).update(
            uid=str(uuid.uuid4()),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        body["metadata"].pop("resourceVersion", None)
        return web.json_response(self._store(ns, name, body), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        lease = self.leases.get((ns, name))
        if lease is None:
            return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found', name)
        return web.json_response(lease)

    async def _list(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        wanted = {}
        for term in filter(None, request.query.get("labelSelector", "").split(",")):
            key, _, value = term.partition("=")
            wanted[key] = value
        items = [
            copy.deepcopy(lease)
            for (n, _), lease in sorted(self.leases.items())
            if n == ns
            and all(lease["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return web.json_response(
            {"kind": "LeaseList", "apiVersion": f"{_GROUP}/v1",
             "metadata": {"resourceVersion": str(self._version)}, "items": items}
        )  # fmt: skip

    async def _update(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        body = await request.json()
        current = self.leases.get((ns, name))
        if current is None:
            return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found', name)
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the '
                "object has been modified; please apply your changes to the latest version "
                "and try again",
                name,
            )
        meta = body.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp"):
            meta[kept] = current["metadata"].get(kept)
        return web.json_response(self._store(ns, name, body))
