"""A repository's docs page: the Markdown Quay shows as the repository description.

One job: turn a repository's docs content (catalog `repositories`) and its docs versions into
Markdown, the page medius's `description.tpl` renders — title, the distribution's description
with its logo, KubeVirt documentation links, then `virtctl` and VirtualMachine examples.

Decisions that shaped it:
- One page per repository from *all* its docs entries (medius rendered each and the last one
  won, so almalinux and centos-stream showed `:9`): a Versions table lists every one with its
  tags, arches and default user; the examples use the newest version (by numeric version order).
- Everything comes from the catalog (name, version, user, env, secure boot) and the registry
  name: rendering reads no registry and no upstream. Only a source that discovers versions
  needs discovery, done by the caller, to know which version the page is about.
- The examples are for the arch medius picked: x86_64 when the version has it, else its first
  arch (instancetype/preference and secure boot are per arch in the catalog).
- The VirtualMachine example is built as data and dumped by PyYAML, so it is valid YAML by
  construction and carries only what a user writes (no `creationTimestamp: null`, no
  `status: {}`); the cloud-init user data is a literal block, readable as written.
- Pure functions, no I/O: tested by rendering the Markdown to HTML and reading it back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from containerdisks.catalog import ENV_INSTANCETYPE, ENV_PREFERENCE, CatalogItem, RepositoryDocs
from containerdisks.tags import STAMP_PLACEHOLDER, tag_order

__all__ = [
    "DOC_LINKS",
    "EXAMPLE_KEY",
    "PageVersion",
    "cloud_config",
    "example_arch",
    "newest",
    "render_page",
    "version_key",
    "virtual_machine",
]

#: The placeholder public key of the examples (medius's).
EXAMPLE_KEY = "ssh-rsa AAAA..."

#: KubeVirt user-guide pages the page links to (medius's links).
DOC_LINKS: tuple[tuple[str, str], ...] = (
    (
        "Installation",
        "https://kubevirt.io/user-guide/operations/installation/#installing-kubevirt-on-kubernetes",
    ),
    (
        "Containerdisks",
        "https://kubevirt.io/user-guide/virtual_machines/disks_and_volumes/#containerdisk",
    ),
    ("virtctl", "https://kubevirt.io/user-guide/user_workloads/virtctl_client_tool"),
    (
        "Creating VirtualMachines by using virtctl",
        "https://kubevirt.io/user-guide/user_workloads/creating_vms/#creating-virtualmachines-by-using-virtctl",
    ),
)
_USER_GUIDE = "https://kubevirt.io/user-guide/"
_IMPORT_SIZE = "10Gi"


@dataclass(frozen=True)
class PageVersion:
    """One docs version of a repository: its catalog item and what it is published as."""

    item: CatalogItem
    version: str
    arches: tuple[str, ...]
    latest: bool

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags that move to each new build (the unique and timestamp tags do not)."""
        return tuple(tag_order(self.version, latest=self.latest))


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Numeric version order: `10` after `9`, `26.04` after `25.04`; text parts after numbers."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def newest(versions: Sequence[PageVersion]) -> PageVersion:
    return max(versions, key=lambda v: version_key(v.version))


def example_arch(version: PageVersion) -> str:
    return "x86_64" if "x86_64" in version.arches else version.arches[0]


def cloud_config(user: str, key: str = EXAMPLE_KEY) -> str:
    """The cloud-init user data of the examples (and of verification, with a real key)."""
    return f"#cloud-config\n# The default username is: {user}\nssh_authorized_keys:\n  - {key}\n"


def _vm_name(name: str, version: str) -> str:
    """A DNS-1123 label: `centos-stream-10`, `ubuntu-26-04`."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{name}-{version}".lower()).strip("-")[:63]


def virtual_machine(
    name: str, image: str, *, user: str | None, secure_boot: bool, key: str = EXAMPLE_KEY
) -> dict[str, Any]:
    """The example VirtualMachine (medius's `BasicVM` with rng, cloud-init NoCloud and, where
    the catalog says so, secure boot with SMM)."""
    disks: list[dict[str, Any]] = [{"name": "containerdisk", "disk": {"bus": "virtio"}}]
    volumes: list[dict[str, Any]] = [{"name": "containerdisk", "containerDisk": {"image": image}}]
    if user is not None:
        disks.append({"name": "cloudinit", "disk": {"bus": "virtio"}})
        volumes.append(
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": cloud_config(user, key)}}
        )
    domain: dict[str, Any] = {
        "resources": {"requests": {"memory": "1Gi"}},
        "devices": {"disks": disks, "rng": {}},
    }
    if secure_boot:
        domain["features"] = {"smm": {"enabled": True}}
        domain["firmware"] = {"bootloader": {"efi": {"secureBoot": True}}}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 180,
                    "domain": domain,
                    "volumes": volumes,
                }
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (the user data reads as written)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def _env_value(item: CatalogItem, arch: str, key: str) -> str | None:
    for entry in item.env(arch):
        k, _, v = entry.partition("=")
        if k == key:
            return v
    return None


def _virtctl(item: CatalogItem, arch: str, volume: str) -> str:
    words = ["virtctl", "create", "vm"]
    instancetype = _env_value(item, arch, ENV_INSTANCETYPE)
    preference = _env_value(item, arch, ENV_PREFERENCE)
    if instancetype:
        words.append(f"--instancetype={instancetype}")
    if preference:
        words.append(f"--preference={preference}")
    words.append(volume)
    return " ".join(words) + " | kubectl create -f -"


def _versions_table(registry: str, name: str, versions: Sequence[PageVersion]) -> list[str]:
    lines = [
        f"Pull them as `{registry}/{name}:<tag>`:",
        "",
        "| Tags | Architectures | Default user |",
        "|---|---|---|",
    ]
    for v in sorted(versions, key=lambda v: version_key(v.version), reverse=True):
        tags = ", ".join(f"`{t}`" for t in v.tags)
        user = f"`{v.item.user}`" if v.item.user else "none"
        lines.append(f"| {tags} | {', '.join(v.arches)} | {user} |")
    lines += [
        "",
        "These tags move to each new build. Every build is also tagged "
        f"`<version>-{STAMP_PLACEHOLDER}`",
        "(its UTC build time) and, where the distribution names its builds, with that name: pin",
        "such a tag to keep an image that never changes.",
    ]
    return lines


def render_page(
    registry: str, name: str, docs: RepositoryDocs, versions: Sequence[PageVersion]
) -> str:
    """The repository's description: Markdown, ending with a newline."""
    if not versions:
        raise ValueError(f"{name}: no docs version to render")
    shown = newest(versions)
    arch = example_arch(shown)
    image = f"{registry}/{name}:{shown.version}"
    vm = virtual_machine(
        _vm_name(name, shown.version),
        image,
        user=shown.item.user,
        secure_boot=shown.item.secure_boot_for(arch),
    )
    lines = [f"# {docs.title} Containerdisk Images", ""]
    if docs.logo:
        lines += [f"![{docs.title} logo]({docs.logo})", ""]
    lines += [docs.description.strip(), ""]
    lines += [f"Learn more about {docs.title} at <{docs.homepage}>.", ""]
    lines += ["## Versions", "", *_versions_table(registry, name, versions), ""]
    lines += [
        "## Documentation",
        "",
        f"These containerdisks are rebuilt automatically whenever {docs.title} publishes a new",
        "cloud image, after checking it against the distribution's own checksum.",
        "",
        f"To get started with KubeVirt, see the [KubeVirt user guide]({_USER_GUIDE}):",
        "",
        *(f"- [{title}]({url})" for title, url in DOC_LINKS),
        "",
        "## Examples",
        "",
        f"The examples use `{name}:{shown.version}`, the newest version here.",
        "",
        "### Creating a VirtualMachine and importing this containerdisk with virtctl",
        "",
        "This imports the containerdisk into a persistent volume the VirtualMachine boots from:",
        "",
        "```shell",
        _virtctl(
            shown.item,
            arch,
            f"--volume-import=type:registry,url:docker://{image},size:{_IMPORT_SIZE}",
        ),
        "```",
        "",
        "### Creating a VirtualMachine without persistence with virtctl",
        "",
        "This boots the containerdisk as an ephemeral volume: changes are lost when it stops:",
        "",
        "```shell",
        _virtctl(shown.item, arch, f"--volume-containerdisk=src:{image}"),
        "```",
        "",
        "### Using this containerdisk in a VirtualMachine definition",
        "",
    ]
    if shown.item.user:
        lines += [
            f"Replace `{EXAMPLE_KEY}` with your SSH public key; log in as `{shown.item.user}`.",
            "",
        ]
    lines += ["```yaml", _dump(vm).rstrip("\n"), "```", ""]
    return "\n".join(lines)
