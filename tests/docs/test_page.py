"""The docs page, rendered to HTML by a real Markdown library and read back as a user sees it.

markdown-it-py (CommonMark, with its table extension as Quay renders GFM tables) turns the page
into HTML; `html.parser` collects headings, links, images, table rows and code blocks. The YAML
example must load to a VirtualMachine that boots the right image as the right user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from markdown_it import MarkdownIt

from containerdisks.catalog import CatalogItem, RepositoryDocs, load_catalog
from containerdisks.docs.page import EXAMPLE_KEY, PageVersion, render_page

REGISTRY = "quay.io/containerdisks"


@dataclass
class Html(HTMLParser):
    """What a reader of the rendered page sees: headings, links, images, table rows, code."""

    headings: list[tuple[str, str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    code: list[tuple[str, str]] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    _open: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append((a.get("src") or "", a.get("alt") or ""))
            return
        if tag == "tr":
            self.rows.append([])
        self._open.append((tag, a))
        self._text.append("")

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        _, attrs = self._open.pop()
        text = self._text.pop()
        if self._text:
            self._text[-1] += text
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, text.strip()))
        elif tag == "a":
            self.links.append((attrs.get("href") or "", text))
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append(text.strip())
        elif tag == "code" and (attrs.get("class") or "").startswith("language-"):
            self.code.append(((attrs.get("class") or "").removeprefix("language-"), text))

    def handle_data(self, data: str) -> None:
        if self._text:
            self._text[-1] += data


def to_html(markdown: str) -> Html:
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    parsed = Html()
    parsed.feed(html)
    parsed.close()
    return parsed


def versions_of(name: str) -> tuple[RepositoryDocs, list[PageVersion]]:
    catalog = load_catalog(None)
    items = [b.item for b in catalog.items if b.item.name == name and b.item.docs]
    return catalog.repositories[name], [
        PageVersion(i, i.version or "40", i.arches, i.latest) for i in items
    ]


def the_vm(page: Html) -> dict[str, Any]:
    blocks = [text for lang, text in page.code if lang == "yaml"]
    assert 1 == len(blocks)
    vm = yaml.safe_load(blocks[0])
    assert isinstance(vm, dict)
    return vm


def volumes(vm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in vm["spec"]["template"]["spec"]["volumes"]}


def test_centos_stream_page_lists_both_versions_and_shows_the_newest() -> None:
    docs, versions = versions_of("centos-stream")
    page = to_html(render_page(REGISTRY, "centos-stream", docs, versions))

    assert ("h1", "CentOS Stream Containerdisk Images") == page.headings[0]
    assert {"Versions", "Documentation", "Examples"} <= {t for h, t in page.headings if h == "h2"}
    assert [
        (
            "https://upload.wikimedia.org/wikipedia/commons/thumb/9/9e/CentOS_Graphical_Symbol.svg/"
            "64px-CentOS_Graphical_Symbol.svg.png",
            "CentOS Stream logo",
        )
    ] == page.images
    # The versions table: a header and both docs entries, newest first (medius showed only :9).
    assert [
        ["Tags", "Architectures", "Default user"],
        ["10", "x86_64, aarch64, s390x", "cloud-user"],
        ["9", "x86_64, aarch64, s390x", "cloud-user"],
    ] == page.rows

    shell = [text.strip() for lang, text in page.code if lang == "shell"]
    assert [
        "virtctl create vm --instancetype=u1.medium --preference=centos.stream10 "
        "--volume-import=type:registry,url:docker://quay.io/containerdisks/centos-stream:10,"
        "size:10Gi | kubectl create -f -",
        "virtctl create vm --instancetype=u1.medium --preference=centos.stream10 "
        "--volume-containerdisk=src:quay.io/containerdisks/centos-stream:10 | kubectl create -f -",
    ] == shell

    vm = the_vm(page)
    assert ("kubevirt.io/v1", "VirtualMachine") == (vm["apiVersion"], vm["kind"])
    assert {"apiVersion", "kind", "metadata", "spec"} == set(vm)  # no `status: {}`
    assert {"name": "centos-stream-10"} == vm["metadata"]  # no `creationTimestamp: null`
    vols = volumes(vm)
    assert (
        "quay.io/containerdisks/centos-stream:10" == vols["containerdisk"]["containerDisk"]["image"]
    )
    user_data = vols["cloudinit"]["cloudInitNoCloud"]["userData"]
    assert user_data.startswith("#cloud-config\n")
    assert "# The default username is: cloud-user" in user_data
    assert {"ssh_authorized_keys": [EXAMPLE_KEY]} == yaml.safe_load(user_data)
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert "firmware" not in domain  # no secure boot for CentOS
    assert "features" not in domain
    assert {} == domain["devices"]["rng"]
    assert ["containerdisk", "cloudinit"] == [d["name"] for d in domain["devices"]["disks"]]


def test_links_are_absolute_and_name_the_site_and_the_user_guide() -> None:
    docs, versions = versions_of("centos-stream")
    page = to_html(render_page(REGISTRY, "centos-stream", docs, versions))
    hrefs = [href for href, _ in page.links]
    for href in hrefs + [src for src, _ in page.images]:
        parts = urlsplit(href)
        assert ("https", True) == (parts.scheme, bool(parts.netloc)), href
    assert "https://www.centos.org/" in hrefs
    assert "https://cloud.centos.org/" in hrefs  # the description's own link
    guide = {text: href for href, text in page.links if href.startswith("https://kubevirt.io/")}
    assert {
        "KubeVirt user guide",
        "Installation",
        "Containerdisks",
        "virtctl",
        "Creating VirtualMachines by using virtctl",
    } == set(guide)


def test_fedora_example_boots_with_secure_boot_and_smm() -> None:
    docs, versions = versions_of("fedora")
    page = to_html(render_page(REGISTRY, "fedora", docs, versions))
    assert [
        ["Tags", "Architectures", "Default user"],
        ["40, latest", "x86_64, aarch64, s390x", "fedora"],
    ] == page.rows
    domain = the_vm(page)["spec"]["template"]["spec"]["domain"]
    assert {"smm": {"enabled": True}} == domain["features"]
    assert {"bootloader": {"efi": {"secureBoot": True}}} == domain["firmware"]
    shell = [text for lang, text in page.code if lang == "shell"]
    assert all("--preference=fedora " in s for s in shell)  # the x86_64 preference


def item(**over: Any) -> CatalogItem:
    base: dict[str, Any] = {
        "name": "distro",
        "version": "1",
        "arches": ["s390x"],
        "user": "admin",
        "source": {"kind": "any"},
    }
    return CatalogItem.model_validate({**base, **over})


DOCS = RepositoryDocs(title="Distro", homepage="https://distro.example/", description="A distro.")


def test_example_arch_without_x86_64_is_the_first_and_its_facts_apply() -> None:
    """medius's pick: amd64, else the first arch; the per-arch secure boot and preference of
    that arch are the example's."""
    it = item(
        arches=["s390x", "aarch64"],
        secure_boot={"aarch64": True, "s390x": False},
        preference={"s390x": "distro.s390x", "aarch64": "distro.arm64"},
    )
    page = to_html(render_page(REGISTRY, "distro", DOCS, [PageVersion(it, "1", it.arches, False)]))
    assert "features" not in the_vm(page)["spec"]["template"]["spec"]["domain"]
    assert all("--preference=distro.s390x " in t for lang, t in page.code if lang == "shell")
    assert all("--instancetype" not in t for lang, t in page.code if lang == "shell")
    assert [] == page.images  # no logo given


def test_an_image_without_a_user_has_no_cloud_init() -> None:
    it = item(user=None)
    page = to_html(render_page(REGISTRY, "distro", DOCS, [PageVersion(it, "1", it.arches, False)]))
    assert ["containerdisk"] == list(volumes(the_vm(page)))
    assert ["none"] == [r[2] for r in page.rows[1:]]


def test_newest_version_is_numeric_not_catalog_order() -> None:
    versions = [PageVersion(item(version=v), v, ("s390x",), False) for v in ("9.10", "10.2", "9.9")]
    page = to_html(render_page(REGISTRY, "distro", DOCS, versions))
    assert ["10.2", "9.10", "9.9"] == [r[0] for r in page.rows[1:]]
    assert (
        "quay.io/containerdisks/distro:10.2"
        == volumes(the_vm(page))["containerdisk"]["containerDisk"]["image"]
    )


@pytest.mark.parametrize(
    "name",
    sorted({b.item.name for b in load_catalog(None).items if b.item.docs}),
)
def test_every_default_docs_page_renders_valid_examples(name: str) -> None:
    docs, versions = versions_of(name)
    page = to_html(render_page(REGISTRY, name, docs, versions))
    assert ("h1", f"{docs.title} Containerdisk Images") == page.headings[0]
    assert docs.homepage in [href for href, _ in page.links]
    assert len(versions) + 1 == len(page.rows)
    vm = the_vm(page)
    user = versions[0].item.user
    user_data = volumes(vm)["cloudinit"]["cloudInitNoCloud"]["userData"]
    assert f"# The default username is: {user}" in user_data
    assert 2 == len([lang for lang, _ in page.code if lang == "shell"])
