"""The KubeVirt booter: one VirtualMachine per target, ready-wait, guest agent, and a loopback
bridge to the VMI's SSH port through the `portforward` subresource, so `ssh.check_login` runs
unchanged. The VM is always deleted.

Decisions (docs/cli.md "In KubeVirt", docs/architecture.md "How a verify flows"):
- The API client and its config are kubernetes-asyncio's (`--kubeconfig`, else `KUBECONFIG` /
  `~/.kube/config`, else the in-cluster service account: a documented superset of medius).
- The port-forward websocket (`plain.kubevirt.io`: raw TCP bytes in binary messages, no channel
  byte) goes through the ApiClient's own aiohttp session (`ws_connect`), which carries the
  kubeconfig's TLS; kubernetes-asyncio's `WsApiClient` is built for the pod exec protocol and
  corrupts binary frames unless bypassed, so it is not used.
- The bridge is a listener on 127.0.0.1 that opens a fresh websocket per accepted connection
  (virtctl's model); `check_login`'s banner probe and each login attempt are separate websockets,
  as medius opens one per attempt. It lives only while the check runs.
- The ready wait polls the VM (medius: every 1 s, up to `--timeout`), fails early on a terminal
  `printableStatus` (ErrImagePull, ImagePullBackOff, ErrorUnschedulable, CrashLoopBackOff, ...),
  keeps polling through temporary statuses (`containerdisks.retry.temporary_status`: 408/429/5xx)
  and connection errors within the timeout, and stops at once on any other (401/403/404, ...).
- The guest agent (`guestosinfo`, 500 while not connected) is polled only for entries whose
  catalog says `guest_agent: true`, with medius's 30 attempts 10 s apart (both settable).
- Delete runs on every exit under `asyncio.shield` with a fresh short timeout, so a SIGINT/SIGTERM
  that cancels the boot still removes the VM (medius leaks it); 404 counts as already gone.
  Temporary statuses, connection errors and timeouts are retried under `containerdisks.retry`
  (5 tries, 0.5 s doubling, no jitter); when the VM still is not gone the entry fails, naming
  `<namespace>/<name>` so a person can delete it (a verified entry must not hide a VM left
  running).
- A create whose answer is lost (timeout, connection error, 5xx, a signal) may still have made
  the VM: then the name is looked up (three times over 3 s, as the create may still land) and
  deleted, but only if it carries this run's
  `containerdisks.kubevirt.io/verify-id` annotation; a 4xx (409 AlreadyExists: someone else's
  VM) is a definite no and nothing is deleted. A VM of ours must never outlive the run, and a
  VM that is not ours must never be removed by it.
- An API server whose TLS certificate is not trusted (no or the wrong CA in the kubeconfig, or
  in the service account's `ca.crt`) is `UntrustedServerError`: one line naming the server and
  the verifier's reason, a config error (exit 2) before anything is created, since giving
  `--target-architecture` would not help; with it, each create fails so, and no lookup follows
  (no connection was made, so no request was sent).
- The cluster credentials the config holds (a bearer token, a Basic password) are registered
  with `containerdisks.oci.redact` once loaded, and a token refreshed for the port-forward when
  it is seen: an API server that echoes one in an error body shows it masked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from containerdisks.oci import redact, safejson
from containerdisks.retry import Budget, RetryPolicy, retrying, temporary_status
from containerdisks.verify.finish import to_the_end
from containerdisks.verify.flow import BootError
from containerdisks.verify.ssh import CheckFailedError
from containerdisks.verify.target import Target

__all__ = [
    "KubeBooter",
    "KubeError",
    "UntrustedServerError",
    "load_config",
    "node_architecture",
    "vm_body",
]

log = structlog.get_logger(__name__)

GROUP, VERSION = "kubevirt.io", "v1"
SUBRESOURCES = "/apis/subresources.kubevirt.io/v1"
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery rand.String
MARKER = "containerdisks.kubevirt.io/verify-id"  # this run's VM, not another's of the same name
TERMINAL = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrorUnschedulable",
        "CrashLoopBackOff",
        "ErrorPvcNotFound",
        "DataVolumeError",
    }
)
_REQUEST_TIMEOUT = (10, 30)
_DELETE_TIMEOUT = 10.0  # per attempt
_DELETE_RETRY = RetryPolicy(attempts=5, base_delay=0.5, max_delay=math.inf, jitter=0.0)
_LOOKUP_PAUSES = (0.0, 1.0, 2.0)  # looking for a VM whose create went unanswered
_CHUNK = 32 * 1024


class KubeError(BootError):
    """The cluster said no, or the VM did not come up; one line."""


class UntrustedServerError(KubeError):
    """The API server's TLS certificate did not verify against the configured CA."""


class _AttemptFailedError(Exception):
    """One try of a retried call failed; the message is one line, `temporary` says whether
    another try may help."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


def _untrusted(what: str, e: aiohttp.ClientConnectorCertificateError) -> UntrustedServerError:
    cause = e.certificate_error
    why = getattr(cause, "verify_message", "") or getattr(cause, "reason", "") or str(cause)
    return UntrustedServerError(
        " ".join(
            f"{what}: the TLS certificate of the API server {e.host}:{e.port} is not trusted "
            f"({why}); give the cluster's CA (kubeconfig certificate-authority, or the service "
            "account's ca.crt in a pod)".split()
        )
    )


def _api_error(what: str, e: ApiException) -> KubeError:
    message = ""
    try:
        body = safejson.loads(e.body or "")
        message = body.get("message", "") if isinstance(body, dict) else ""
    except (ValueError, TypeError):
        message = (e.body or "").strip() if isinstance(e.body, str) else ""
    message = redact.redact(message) if isinstance(message, str) else ""
    head = f"{what}: HTTP {e.status} {e.reason or ''}".rstrip()
    return KubeError(" ".join(f"{head}: {message}".split()) if message else head)  # one line


def _any_file(paths: list[str]) -> bool:
    return any(Path(p).is_file() for p in paths if p)


async def load_config(kubeconfig: str, master: str = "") -> kclient.Configuration:
    """The client config, looked up in this order: `kubeconfig` (`--kubeconfig`), else the
    files `KUBECONFIG` names (merged), else `~/.kube/config`, else the in-cluster service
    account. `master` (`--master`) replaces the API server address of whichever is found, and
    alone (no kubeconfig file at all) is the address, without credentials (client-go's
    `BuildConfigFromFlags`, which medius's `--master` is). A `KUBECONFIG` naming no existing
    file is an error naming it, not a silent fall back to the in-cluster config."""
    cfg = kclient.Configuration()
    env = os.environ.get("KUBECONFIG", "")
    home = Path.home() / ".kube" / "config"
    try:
        if kubeconfig:
            await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        elif env:
            if not _any_file(env.split(os.pathsep)):
                raise KubeError(f"kubernetes config: KUBECONFIG={env}: no such file")
            await kconfig.load_kube_config(config_file=env, client_configuration=cfg)
        elif _any_file([str(home)]):
            await kconfig.load_kube_config(config_file=str(home), client_configuration=cfg)
        elif not master:  # checked here: the library would log a warning before falling back
            kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (ConfigException, FileNotFoundError, OSError, ValueError) as e:
        where = kubeconfig or (f"KUBECONFIG={env}" if env else f"{home} or in-cluster config")
        raise KubeError(f"kubernetes config ({where}): {e}") from None
    if master:
        cfg.host = master.rstrip("/")
    for value in cfg.api_key.values():
        _register_authorization(value)
    redact.register(cfg.password)
    return cfg


def _register_authorization(value: object) -> None:
    """Register the credential of an `Authorization` value (`Bearer <token>`, `Basic <b64>`)."""
    if not isinstance(value, str):
        return
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip() or scheme
    redact.register(credential)
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            user_password = base64.b64decode(credential, validate=True).decode()
            redact.register(user_password)
            redact.register(user_password.partition(":")[2])


async def node_architecture(api: kclient.ApiClient) -> str:
    """`items[0].status.nodeInfo.architecture`, as medius."""
    try:
        nodes = await kclient.CoreV1Api(api).list_node(_request_timeout=_REQUEST_TIMEOUT)
    except ApiException as e:
        raise _api_error("list nodes", e) from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise _untrusted("list nodes", e) from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise KubeError(f"list nodes: {type(e).__name__}: {e}") from None
    if not nodes.items:
        raise KubeError("list nodes: no nodes found")
    arch = str(nodes.items[0].status.node_info.architecture)
    others = {n.status.node_info.architecture for n in nodes.items} - {arch}
    if others:
        log.warning("nodes_disagree", chosen=arch, others=sorted(others))
    return arch


def vm_name(name: str) -> str:
    return f"{name}-{''.join(secrets.choice(NAME_ALPHABET) for _ in range(5))}"


def vm_body(
    name: str, image: str, user_data: str, secure_boot: bool, marker: str = ""
) -> dict[str, Any]:
    """medius's `docs.NewVM` with rng, cloudInitNoCloud, and TGPS 0 (verify mode); `marker`
    is the annotation that proves the VM is this run's."""
    domain: dict[str, Any] = {"resources": {"requests": {"memory": "1Gi"}}}
    if secure_boot:
        domain["firmware"] = {"bootloader": {"efi": {"secureBoot": True}}}
        domain["features"] = {"smm": {"enabled": True}}
    domain["devices"] = {
        "disks": [
            {"name": "containerdisk", "disk": {"bus": "virtio"}},
            {"name": "cloudinit", "disk": {"bus": "virtio"}},
        ],
        "rng": {},
    }
    return {
        "kind": "VirtualMachine",
        "apiVersion": "kubevirt.io/v1",
        "metadata": {"name": name, **({"annotations": {MARKER: marker}} if marker else {})},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "domain": domain,
                    "terminationGracePeriodSeconds": 0,
                    "volumes": [
                        {"name": "containerdisk", "containerDisk": {"image": image}},
                        {"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}},
                    ],
                }
            },
        },
    }


@dataclass
class _Bridge:
    """A loopback listener; each connection is pumped through a new port-forward websocket."""

    ssh_host: str = "127.0.0.1"
    ssh_port: int = 0
    failed: str | None = None
    refused: str = ""  # the last port-forward refusal, for a no-banner error
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def failure(self) -> str | None:
        return self.failed


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ws: aiohttp.ClientWebSocketResponse,
) -> None:
    async def up() -> None:
        while chunk := await reader.read(_CHUNK):
            await ws.send_bytes(chunk)

    async def down() -> None:
        async for msg in ws:  # a receive is always pending, so pings are answered
            if msg.type == aiohttp.WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class KubeBooter:
    """Boots a target as a KubeVirt VM in `namespace`; the image is `<registry>/<Tags[0]>`."""

    def __init__(
        self,
        api: kclient.ApiClient,
        cfg: kclient.Configuration,
        *,
        registry: str,
        namespace: str,
        timeout: float,
        poll: float,
        retry_interval: float,
        retry_attempts: int,
    ) -> None:
        self.api = api
        self.cfg = cfg
        self.objects = kclient.CustomObjectsApi(api)
        self.registry = registry.rstrip("/")
        self.namespace = namespace
        self.timeout = timeout
        self.poll = poll
        self.retry_interval = retry_interval
        self.retry_attempts = retry_attempts

    def image(self, target: Target) -> str:
        return f"{self.registry}/{target.name}:{target.first_tag}"  # medius: registry/Tags[0]

    def describe(self, target: Target) -> str:
        return f"VM in namespace {self.namespace} from {self.image(target)}"

    def cannot_boot(self, target: Target) -> str | None:
        return None

    @asynccontextmanager
    async def boot(self, target: Target, user_data: str) -> AsyncIterator[_Bridge]:
        name = vm_name(target.name)
        marker = secrets.token_hex(8)
        await self._create(
            name, vm_body(name, self.image(target), user_data, target.secure_boot, marker), marker
        )
        log.info("vm_created", vm=name, namespace=self.namespace, image=self.image(target))
        try:
            await self._wait_ready(name)
            if target.guest_agent:
                await self._wait_guest_agent(name)
            async with self._bridge(name) as bridge:
                yield bridge
        except BaseException as e:
            left = await to_the_end(self._delete(name))
            if left is not None and isinstance(e, (KubeError, CheckFailedError)):
                raise KubeError(f"{e}; {left}") from None
            raise
        left = await to_the_end(self._delete(name))
        if left is not None:
            raise KubeError(left)

    async def _create(self, name: str, body: dict[str, Any], marker: str) -> None:
        """Create the VM, or raise; when the answer is lost, remove what may have been made."""
        what = f"create VirtualMachine {self.namespace}/{name}"
        try:
            await self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "virtualmachines", body,
                _request_timeout=_REQUEST_TIMEOUT,
            )  # fmt: skip
            return
        except ApiException as e:
            unsure = _api_error(what, e)
            if (e.status or 0) < 500:
                raise unsure from None  # a definite no; a 409 names someone else's VM
        except aiohttp.ClientConnectorCertificateError as e:
            raise _untrusted(what, e) from None  # no connection, so no request: nothing made
        except (aiohttp.ClientError, TimeoutError) as e:
            unsure = KubeError(f"{what}: {type(e).__name__}: {e}".rstrip(": "))
        except asyncio.CancelledError:
            await to_the_end(self._remove_if_ours(name, marker))
            raise
        left = await to_the_end(self._remove_if_ours(name, marker))
        raise KubeError(f"{unsure}; {left}" if left else str(unsure)) from None

    async def _remove_if_ours(self, name: str, marker: str) -> str | None:
        """After a create with no answer: delete `name` if it exists and carries `marker`.
        None when nothing of ours is left, else the one line saying what may be."""
        where = f"{self.namespace}/{name}"
        for pause in _LOOKUP_PAUSES:  # a create still on its way may land after a first 404
            await asyncio.sleep(pause)
            try:
                vm = await asyncio.wait_for(self._get("virtualmachines", name), _DELETE_TIMEOUT)
            except ApiException as e:
                if e.status == 404:
                    continue
                why = str(_api_error("get", e))
            except (aiohttp.ClientError, TimeoutError) as e:
                why = f"get: {type(e).__name__}: {e}".rstrip(": ")
            else:
                annotations = (vm.get("metadata") or {}).get("annotations") or {}
                if annotations.get(MARKER) != marker:
                    log.warning("vm_not_ours", vm=where)  # another's VM of that name: left alone
                    return None
                log.info("vm_created_unanswered", vm=where)
                return await self._delete(name)
            log.error("vm_maybe_left_behind", vm=where, error=why)
            return f"VM {where} may have been left behind ({why}); check and delete it by hand"
        log.info("vm_not_created", vm=where)
        return None

    def _vmi_path(self, name: str) -> str:
        return f"{SUBRESOURCES}/namespaces/{self.namespace}/virtualmachineinstances/{name}"

    async def _get(self, plural: str, name: str) -> dict[str, Any]:
        got = await self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, _request_timeout=_REQUEST_TIMEOUT
        )
        return got if isinstance(got, dict) else {}

    async def _wait_ready(self, name: str) -> None:
        budget = Budget(time.monotonic() + self.timeout)
        last = ""
        while True:
            try:
                vm = await self._get("virtualmachines", name)
            except ApiException as e:
                if not temporary_status(e.status):
                    raise _api_error(f"get VirtualMachine {name}", e) from None
                last = f"HTTP {e.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                status = vm.get("status") or {}
                if status.get("ready") is True:
                    log.info("vm_ready", vm=name)
                    return
                printable = str(status.get("printableStatus", ""))
                if printable in TERMINAL:
                    raise KubeError(f"VirtualMachine {name} is {printable}")
                last = printable or "no status yet"
            if budget.expired():
                raise KubeError(
                    f"VirtualMachine {name} not ready within {self.timeout:g} s (last: {last})"
                )
            await budget.pause(self.poll)

    async def _wait_guest_agent(self, name: str) -> None:
        path = (
            f"{SUBRESOURCES}/namespaces/{self.namespace}/virtualmachineinstances/{name}/guestosinfo"
        )
        attempts = 0

        async def ask() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await self.api.call_api(
                    path, "GET",
                    header_params={"Accept": "application/json"},
                    response_types_map={200: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _request_timeout=aiohttp.ClientTimeout(total=30, connect=10),
                )  # fmt: skip
            except ApiException as e:
                if e.status in (401, 403):
                    raise _api_error(f"guestosinfo of {name}", e) from None
                # any other answer (500 while the agent is not connected) is worth polling on
                body = redact.redact(str(e.body or "")).strip()[:300]
                raise _AttemptFailedError(f"HTTP {e.status}: {body}", temporary=True) from None
            except (aiohttp.ClientError, TimeoutError) as e:
                raise _AttemptFailedError(f"{type(e).__name__}: {e}", temporary=True) from None

        interval = self.retry_interval
        poll = RetryPolicy(
            attempts=self.retry_attempts, base_delay=interval, max_delay=interval, jitter=0.0
        )
        await retrying(
            f"guestosinfo of {name}",
            ask,
            poll,
            kind="kubernetes",
            on_retry=_quiet,
            exhausted=lambda e, n: KubeError(
                f"guest agent of {name} not connected after {n} attempts ({e})"
            ),
        )
        log.info("guest_agent_connected", vm=name, attempts=attempts)

    async def _websocket(self, name: str) -> aiohttp.ClientWebSocketResponse:
        host = str(self.cfg.host).rstrip("/")
        url = host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url += f"{self._vmi_path(name)}/portforward/22/tcp"
        headers = {}
        auth = (await self.cfg.auth_settings()).get("BearerToken")
        if auth and auth.get("value"):
            _register_authorization(auth["value"])  # refreshed, maybe
            headers[auth["key"]] = auth["value"]
        session: aiohttp.ClientSession = self.api.rest_client.pool_manager
        return await session.ws_connect(
            url,
            protocols=("plain.kubevirt.io",),
            headers=headers,
            heartbeat=None,
            server_hostname=self.cfg.tls_server_name or None,
            proxy=self.cfg.proxy or None,
        )

    @asynccontextmanager
    async def _bridge(self, name: str) -> AsyncIterator[_Bridge]:
        bridge = _Bridge()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            bridge.tasks.add(task)
            try:
                try:
                    ws = await self._websocket(name)
                except aiohttp.WSServerHandshakeError as e:
                    bridge.refused = f"HTTP {e.status}"
                    if e.status in (401, 403, 404):
                        bridge.failed = f"port-forward to {name}: HTTP {e.status}"
                    log.debug("portforward_refused", vm=name, status=e.status)
                    return
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    bridge.refused = f"{type(e).__name__}: {e}".rstrip(": ")
                    log.debug("portforward_failed", vm=name, error=str(e))
                    return
                bridge.refused = ""
                async with ws:
                    await _pump(reader, writer, ws)
            finally:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
                bridge.tasks.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        bridge.ssh_port = server.sockets[0].getsockname()[1]
        try:
            yield bridge
        except CheckFailedError as e:
            if e.kind == "no-boot" and bridge.failed:  # the API said no, not the guest
                raise KubeError(bridge.failed) from None
            if e.kind != "no-banner" or not bridge.refused:
                raise
            why = f"{e} (the port-forward to {name} answered {bridge.refused})"
            raise CheckFailedError(e.kind, " ".join(why.split())) from None
        finally:
            server.close()
            for t in list(bridge.tasks):
                t.cancel()
            await asyncio.gather(*bridge.tasks, return_exceptions=True)
            await server.wait_closed()

    async def _delete(self, name: str) -> str | None:
        """Delete the VM; None once it is gone (404 included), else the one line saying it was
        left behind. Transient failures are retried a bounded number of times."""
        attempts = 0

        async def delete() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await asyncio.wait_for(
                    self.objects.delete_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, "virtualmachines", name,
                        grace_period_seconds=0,
                    ),
                    _DELETE_TIMEOUT,
                )  # fmt: skip
            except ApiException as e:
                if e.status == 404:
                    log.info("vm_already_gone", vm=name, namespace=self.namespace)
                    return
                # 401/403/...: asking again will not help
                failed = _AttemptFailedError(
                    str(_api_error("delete", e)), temporary=temporary_status(e.status)
                )
            except (aiohttp.ClientError, TimeoutError) as e:
                failed = _AttemptFailedError(
                    f"delete: {type(e).__name__}: {e}".rstrip(": "), temporary=True
                )
            else:
                log.info("vm_deleted", vm=name, namespace=self.namespace, attempts=attempts)
                return
            log.warning("vm_delete_failed", vm=name, attempt=attempts, error=str(failed))
            raise failed

        try:
            await retrying(
                f"delete VirtualMachine {self.namespace}/{name}",
                delete,
                _DELETE_RETRY,
                kind="kubernetes",
                on_retry=_quiet,
            )
        except _AttemptFailedError as e:
            where = f"{self.namespace}/{name}"
            log.error("vm_left_behind", vm=where, error=str(e))
            return f"VM {where} was left behind ({e}); delete it by hand"
        return None


def _quiet(*_: object) -> None:
    """A retry the booter logs itself (each failed attempt), or not at all (polling)."""
