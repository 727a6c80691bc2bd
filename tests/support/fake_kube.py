"""A FAKE Kubernetes + KubeVirt API server on 127.0.0.1 whose VMs are real qemu guests.

One job: stand in for the calls `images verify` makes (docs/architecture.md "How a verify flows",
step 4): list nodes; create, get and delete `virtualmachines`; get `virtualmachineinstances`; the
`guestosinfo` and `portforward` subresources — with the real routes, status codes and `Status`
bodies, and the discovery documents kubectl needs to read nodes and VMs (the honesty test).

This is a fake, not Kubernetes: no cluster can run here (docs/architecture.md "How it is tested").
Decisions:
- Each VM follows a `Scenario`, a timeline from its creation: not ready (with a
  `printableStatus`, e.g. `ErrImagePull`) until `ready_after`, guest agent from `agent_after`
  (None: never). What boots is chosen by the image's repository name (`disks`): a real qemu
  guest (the tiny image of the `--local` tests, BIOS, TCG) started from the VM's own
  `cloudInitNoCloud.userData`, with SSH forwarded to a loopback port; the port-forward
  websocket dials that port before upgrading, as virt-api does (500 while refused), then pumps
  binary messages. An image without a disk has no guest: its SSH port is refused.
- Deleting a VM stops its qemu; `deletes` counts deletes per VM so tests can assert exactly one
  per create, and `live` must be empty at the end.
- `token` is checked on every request (401 `Status` otherwise; `bearers` collects every
  `Authorization` header seen, so a test can name the credential used), except that
  `anonymous_reads` lets GETs through for kubectl, which never sends a bearer token over plain
  HTTP;
  `unauthorized` answers 401 (a token revoked mid-run) and `forbid` 403 for `(verb, resource)`;
  `fail` answers canned statuses for `(verb, resource)`.
- Lost create answers, as a real apiserver can produce them: `create_delay` holds the answer
  to a create for that long after the VM is stored (until it is deleted), and
  `fail_after_store` answers canned statuses after storing it; `store_delay` stores it only
  that long after the request arrived (the answer lost, the VM still on its way).
- `squat`: another party takes the requested name just before a create lands, so the 409
  AlreadyExists comes from a real collision in the store; `squatters` names its VMs (not in
  `created`: the tool did not make them, and must not delete them).
- `portforwards` logs every port-forward request (VM, port, query, the websocket subprotocols
  offered, the one chosen when upgraded, whether it came over TLS) and outlives the VM, so tests
  can check the `plain.kubevirt.io` handshake after the tool has deleted it.
- Plain HTTP by default; `tls=True` serves HTTPS (so the port-forward is `wss`) with a
  throwaway CA and a certificate for 127.0.0.1 (IP SAN) made by openssl under `work/tls`
  (`registry.make_ca`); `ca` is the CA file, which `kubeconfig` names as
  `certificate-authority` (unless `ca=False`), and which an in-cluster test copies as the
  service account's `ca.crt`, as real clusters serve HTTPS only.
- Runs in a thread of its own (`with`, `tests.support.loopback`), since tests start the command
  line as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import WSMsgType, web

from containerdisks.verify import qemu
from containerdisks.verify.seed import meta_data, write_seed
from tests.support.loopback import LoopbackServer
from tests.support.registry import make_ca

__all__ = ["FakeKube", "Scenario"]

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NODE_INFO_KEYS = (
    "bootID", "containerRuntimeVersion", "kernelVersion", "kubeProxyVersion", "kubeletVersion",
    "machineID", "operatingSystem", "osImage", "systemUUID",
)  # fmt: skip


@dataclass
class Scenario:
    ready_after: float | None = 0.0  # seconds after create; None: never ready
    printable: str = "Starting"  # printableStatus before ready
    agent_after: float | None = 0.0  # guest agent connected; None: never


@dataclass
class _VM:
    body: dict[str, Any]
    created: float
    scenario: Scenario
    ssh_port: int | None = None
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    gone: asyncio.Event = field(default_factory=asyncio.Event)


def _status(code: int, reason: str, message: str, name: str = "", kind: str = "") -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }  # fmt: skip
    if name:
        body["details"] = {"name": name, "group": "kubevirt.io", "kind": kind}
    return web.json_response(body, status=code)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube(LoopbackServer):
    """The fake; `url` is its base, `kubeconfig(path)` writes a kubeconfig for it."""

    name = "fake-kube"
    stop_timeout = 60.0  # every live VM's qemu is stopped first

    def __init__(
        self,
        work: Path,
        *,
        token: str = "fake-token",
        archs: tuple[str, ...] = ("amd64",),
        disks: Mapping[str, Path] | None = None,
        scenarios: Mapping[str, Scenario] | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__()
        self.work = work
        self.tls = tls
        self.ca: Path | None = None  # the CA file when `tls`, made on `__enter__`
        self.token = token
        self.archs = archs
        self.disks = dict(disks or {})
        self.scenarios = dict(scenarios or {})
        self.forbid: set[tuple[str, str]] = set()
        self.unauthorized: set[tuple[str, str]] = set()
        self.anonymous_reads = False  # kubectl sends no bearer token over plain HTTP
        self.fail: dict[tuple[str, str], list[int]] = {}
        self.create_delay = 0.0
        self.fail_after_store: list[int] = []
        self.store_delay = 0.0
        self.squat = False
        self.squatters: list[str] = []
        self.most_live = 0  # the most VMs alive at once (`--workers`)
        self.vms: dict[tuple[str, str], _VM] = {}
        self.created: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.deletes: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.bearers: set[str] = set()
        self.portforwards: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def live(self) -> list[str]:
        return sorted(name for _, name in self.vms)

    def kubeconfig(self, path: Path, token: str | None = None, *, ca: bool = True) -> Path:
        """A kubeconfig for the fake; with `tls`, it names the CA unless `ca` is False."""
        cluster: dict[str, str] = {"server": self.url}
        if self.ca is not None and ca:
            cluster["certificate-authority"] = str(self.ca)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config))
        return path

    # -- lifecycle (LoopbackServer serves the app) ------------------------------------------
    def __enter__(self) -> Self:
        if self.tls:
            self.ca, crt, key = make_ca(self.work / "tls")
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(crt, key)
        return super().__enter__()

    async def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        vms = "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines"
        vmis = "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances"
        sub = "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}"
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/api/v1", self._core_resources)
        app.router.add_get("/apis", self._groups)
        app.router.add_get("/apis/kubevirt.io/v1", self._kubevirt_resources)
        app.router.add_get("/api/v1/nodes", self._nodes)
        app.router.add_post(vms, self._create)
        app.router.add_get(vms, self._list_vms)
        app.router.add_get(vms + "/{name}", self._get_vm)
        app.router.add_delete(vms + "/{name}", self._delete)
        app.router.add_get(vmis + "/{name}", self._get_vmi)
        app.router.add_get(sub + "/guestosinfo", self._guestosinfo)
        app.router.add_get(sub + "/portforward/{port}", self._portforward)
        app.router.add_get(sub + "/portforward/{port}/{protocol}", self._portforward)
        return app

    async def stop(self) -> None:
        """Stop every VM's qemu, then serving."""
        for vm in list(self.vms.values()):
            vm.gone.set()
            await vm.stack.aclose()
        await super().stop()

    # -- middleware ---------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.bearers.add(request.headers.get("Authorization", ""))
        anonymous = self.anonymous_reads and request.method == "GET"
        if request.headers.get("Authorization") != f"Bearer {self.token}" and not anonymous:
            return _status(401, "Unauthorized", "Unauthorized")
        verb = {"POST": "create", "DELETE": "delete"}.get(request.method, "get")
        resource = _resource(request.path)
        if request.path.endswith(("/nodes", "/virtualmachines")) and request.method == "GET":
            verb = "list"
        if (verb, resource) in self.unauthorized:
            return _status(401, "Unauthorized", "Unauthorized")
        if (verb, resource) in self.forbid:
            return _status(
                403, "Forbidden",
                f'{resource} is forbidden: User "fake" cannot {verb} resource "{resource}"',
            )  # fmt: skip
        canned = self.fail.get((verb, resource))
        if canned:
            code = canned.pop(0)
            return _status(code, "InternalError" if code >= 500 else "Conflict", f"canned {code}")
        response: web.StreamResponse = await handler(request)
        return response

    # -- discovery (for kubectl) ----------------------------------------------------------------
    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        )  # fmt: skip

    async def _core_resources(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
                 "verbs": ["get", "list"], "shortNames": ["no"]}]}
        )  # fmt: skip

    async def _groups(self, request: web.Request) -> web.Response:
        version = {"groupVersion": "kubevirt.io/v1", "version": "v1"}
        return web.json_response(
            {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "kubevirt.io", "versions": [version], "preferredVersion": version}]}
        )  # fmt: skip

    async def _kubevirt_resources(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kubevirt.io/v1",
             "resources": [
                {"name": "virtualmachines", "singularName": "virtualmachine", "namespaced": True,
                 "kind": "VirtualMachine", "verbs": ["create", "delete", "get", "list"],
                 "shortNames": ["vm", "vms"]},
                {"name": "virtualmachineinstances", "singularName": "virtualmachineinstance",
                 "namespaced": True, "kind": "VirtualMachineInstance", "verbs": ["get"],
                 "shortNames": ["vmi", "vmis"]}]}
        )  # fmt: skip

    # -- core ------------------------------------------------------------------------------------
    async def _nodes(self, request: web.Request) -> web.Response:
        items = []
        for i, arch in enumerate(self.archs):
            info = dict.fromkeys(_NODE_INFO_KEYS, "")
            info.update(architecture=arch, operatingSystem="linux", kubeletVersion="v1.33.0")
            items.append(
                {"metadata": {"name": f"node-{i}", "uid": str(uuid.uuid4()),
                              "creationTimestamp": "2026-01-01T00:00:00Z"},
                 "status": {"nodeInfo": info}}
            )  # fmt: skip
        return web.json_response(
            {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
             "items": items}
        )  # fmt: skip

    # -- virtual machines --------------------------------------------------------------------------
    def _view(self, ns: str, vm: _VM) -> dict[str, Any]:
        body = json.loads(json.dumps(vm.body))
        age = time.monotonic() - vm.created
        s = vm.scenario
        if s.ready_after is not None and age >= s.ready_after:
            cond = {"type": "Ready", "status": "True"}
            body["status"] = {"created": True, "ready": True, "printableStatus": "Running",
                              "conditions": [cond]}  # fmt: skip
        else:
            cond = {"type": "Ready", "status": "False", "reason": "VMIConditionMissing"}
            body["status"] = {"printableStatus": s.printable, "conditions": [cond]}
        return body

    def _ready(self, vm: _VM) -> bool:
        s = vm.scenario
        return s.ready_after is not None and time.monotonic() - vm.created >= s.ready_after

    async def _create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        try:
            body = await request.json()
        except ValueError:
            return _status(400, "BadRequest", "the body is not JSON")
        name = str(body.get("metadata", {}).get("name", ""))
        if body.get("kind") != "VirtualMachine" or body.get("apiVersion") != "kubevirt.io/v1":
            return _status(400, "BadRequest", "not a kubevirt.io/v1 VirtualMachine")
        if not _DNS1123.match(name) or len(name) > 63:
            return _status(422, "Invalid", f'VirtualMachine "{name}" is invalid: metadata.name')
        if self.store_delay:  # the create reaches the store late: a first lookup sees 404
            await asyncio.sleep(self.store_delay)
        if self.squat and _DNS1123.match(name):
            other = {"kind": "VirtualMachine", "apiVersion": "kubevirt.io/v1",
                     "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                                  "creationTimestamp": _now()},
                     "spec": {"runStrategy": "Halted"}}  # fmt: skip
            self.vms[(ns, name)] = _VM(other, time.monotonic(), Scenario(ready_after=None))
            self.squatters.append(name)
        if (ns, name) in self.vms:
            return _status(
                409, "AlreadyExists", f'virtualmachines.kubevirt.io "{name}" already exists',
                name, "virtualmachines",
            )  # fmt: skip
        try:
            spec = body["spec"]["template"]["spec"]
            image = next(
                v["containerDisk"]["image"] for v in spec["volumes"] if "containerDisk" in v
            )
            user_data = next(
                v["cloudInitNoCloud"]["userData"]
                for v in spec["volumes"]
                if "cloudInitNoCloud" in v
            )
            spec["domain"]["devices"]
        except (KeyError, StopIteration, TypeError):
            return _status(422, "Invalid", f'VirtualMachine "{name}" is invalid: spec')
        meta = body["metadata"]
        meta.update(
            namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1", generation=1,
            creationTimestamp=_now(), finalizers=["kubevirt.io/virtualMachineControllerFinalize"],
        )  # fmt: skip
        repo = image.rsplit("/", 1)[-1].split(":", 1)[0]
        vm = _VM(body, time.monotonic(), self.scenarios.get(repo, Scenario()))
        self.vms[(ns, name)] = vm
        self.created.append(name)
        self.most_live = max(self.most_live, len(self.vms))
        self.bodies.append(json.loads(json.dumps(body)))
        disk = self.disks.get(repo)
        if disk is not None:
            await self._boot(vm, name, disk, user_data)
        if self.fail_after_store:
            code = self.fail_after_store.pop(0)
            return _status(code, "InternalError", f"canned {code} after storing {name}")
        if self.create_delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(vm.gone.wait(), self.create_delay)
        return web.json_response(body, status=201)

    async def _boot(self, vm: _VM, name: str, disk: Path, user_data: str) -> None:
        work = self.work / name
        work.mkdir(parents=True)
        vm.stack.callback(_rmtree, work)
        seed = await write_seed(work, user_data, meta_data(name))
        booted = qemu.boot(
            goarch="amd64", disk=disk, seed=seed, work=work, firmware="bios", kvm=False,
            memory_mib=256, account=qemu.qemu_account("nobody"),
        )  # fmt: skip
        vm.ssh_port = (await vm.stack.enter_async_context(booted)).ssh_port

    async def _list_vms(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        items = [self._view(n, vm) for (n, _), vm in self.vms.items() if n == ns]
        return web.json_response(
            {"kind": "VirtualMachineList", "apiVersion": "kubevirt.io/v1",
             "metadata": {"resourceVersion": "1"}, "items": items}
        )  # fmt: skip

    async def _get_vm(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        vm = self.vms.get((ns, name))
        if vm is None:
            return _status(
                404, "NotFound", f'virtualmachines.kubevirt.io "{name}" not found',
                name, "virtualmachines",
            )  # fmt: skip
        return web.json_response(self._view(ns, vm))

    async def _delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        vm = self.vms.pop((ns, name), None)
        if vm is None:
            return _status(
                404, "NotFound", f'virtualmachines.kubevirt.io "{name}" not found',
                name, "virtualmachines",
            )  # fmt: skip
        self.deletes[name] = self.deletes.get(name, 0) + 1
        vm.gone.set()
        await vm.stack.aclose()
        body = self._view(ns, vm)
        body["metadata"]["deletionTimestamp"] = _now()
        return web.json_response(body)

    # -- instances and subresources ------------------------------------------------------------
    def _vmi(self, request: web.Request) -> _VM | None:
        vm = self.vms.get((request.match_info["ns"], request.match_info["name"]))
        return vm if vm is not None and self._ready(vm) else None

    async def _get_vmi(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        vm = self._vmi(request)
        if vm is None:
            return _status(
                404, "NotFound", f'virtualmachineinstances.kubevirt.io "{name}" not found',
                name, "virtualmachineinstances",
            )  # fmt: skip
        iface = {"ipAddress": "127.0.0.1", "ipAddresses": ["127.0.0.1"], "name": "default"}
        return web.json_response(
            {"kind": "VirtualMachineInstance", "apiVersion": "kubevirt.io/v1",
             "metadata": {"name": name, "namespace": request.match_info["ns"]},
             "status": {"phase": "Running", "interfaces": [iface], "nodeName": "node-0"}}
        )  # fmt: skip

    async def _guestosinfo(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        vm = self._vmi(request)
        subject = f'Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io "{name}"'
        if vm is None:
            return web.Response(status=500, text=f"{subject}: VMI is not running")
        after = vm.scenario.agent_after
        if after is None or time.monotonic() - vm.created < (vm.scenario.ready_after or 0) + after:
            return web.Response(
                status=500, text=f"{subject}: VMI does not have guest agent connected"
            )
        return web.json_response(
            {"guestAgentVersion": "9.2.0", "hostname": name,
             "os": {"name": "Tiny", "id": "tiny", "version": "1", "versionId": "1",
                    "prettyName": "Tiny 1", "kernelRelease": "", "kernelVersion": "",
                    "machine": "x86_64"},
             "timezone": "UTC, 0", "metadata": {"creationTimestamp": None}}
        )  # fmt: skip

    async def _portforward(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        record: dict[str, Any] = {
            "vm": name, "port": request.match_info["port"], "query": dict(request.query),
            "protocols": [p.strip() for p in offered.split(",") if p.strip()], "chosen": None,
            "tls": request.secure,
        }  # fmt: skip
        self.portforwards.append(record)
        vm = self._vmi(request)
        if vm is None:
            return _status(
                404, "NotFound", f'virtualmachineinstance.kubevirt.io "{name}" not found'
            )
        if request.match_info.get("protocol", "tcp") != "tcp":
            return _status(500, "InternalError", "only tcp here")
        port = request.match_info["port"]
        refused = f"Internal error occurred: dialing VM: dial tcp 127.0.0.1:{port}: connect: "
        if port != "22" or vm.ssh_port is None:
            return _status(500, "InternalError", refused + "connection refused")
        try:  # dial first, then upgrade (virt-api's Streamer.Handle)
            reader, writer = await asyncio.open_connection("127.0.0.1", vm.ssh_port)
        except OSError:
            return _status(500, "InternalError", refused + "connection refused")
        ws = web.WebSocketResponse(protocols=("plain.kubevirt.io",), autoping=True, heartbeat=None)
        await ws.prepare(request)
        record["chosen"] = ws.ws_protocol

        async def down() -> None:
            while chunk := await reader.read(32 * 1024):
                await ws.send_bytes(chunk)

        async def up() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    writer.write(msg.data)
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            if request.transport is not None:
                request.transport.close()  # gorilla's Conn.Close: no close frame
        return ws


def _resource(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    for known in ("guestosinfo", "portforward"):
        if known in parts:
            return f"virtualmachineinstances/{known}"
    for known in ("virtualmachineinstances", "virtualmachines", "nodes"):
        if known in parts:
            return known
    return ""


def _rmtree(path: Path) -> None:
    import shutil  # noqa: PLC0415

    shutil.rmtree(path, ignore_errors=True)
