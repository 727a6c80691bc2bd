"""The checksum-file parsers on the real files distributions publish (tests/fixtures/upstream)."""

from __future__ import annotations

import pytest

from containerdisks.api import (
    ChecksumFormat,
    ChecksumParseError,
    file_name_problem,
    parse_checksum_file,
)
from tests.support.upstream_server import FIXTURES_DIR


def read(fixture: str) -> str:
    return (FIXTURES_DIR / fixture).read_text(encoding="utf-8")


# One row per real file: format, number of distinct names, and entries checked in full.
@pytest.mark.parametrize(
    ("fixture", "fmt", "count", "entries"),
    [
        pytest.param(
            "hashsum/bsd.checksum",
            "bsd",
            23,
            {
                "CentOS-8-GenericCloud-8.4.2105-20210603.0.x86_64.qcow2": (
                    "3510fc7deb3e1939dbf3fe6f65a02ab1efcc763480bc352e4c06eca2e4f7c2a2"
                ),
            },
            id="bsd-with-size-comments",
        ),
        pytest.param(
            "hashsum/gnu.checksum",
            "gnu",
            33,
            {
                "rhcos-4.9.0-x86_64-qemu.x86_64.qcow2.gz": (
                    "cae8928e0cd35b88fcec7c07b1072155bde17d7dd44985f8b0d9e3862c556602"
                ),
                # A different name with the same bytes keeps its own entry.
                "rhcos-qemu.x86_64.qcow2.gz": (
                    "cae8928e0cd35b88fcec7c07b1072155bde17d7dd44985f8b0d9e3862c556602"
                ),
            },
            id="gnu",
        ),
        pytest.param(
            "hashsum/broken.checksum",
            "bsd",
            5,
            {
                "CentOS-Stream-GenericCloud-9-20211119.0.x86_64.qcow2": (
                    "84e67ec05f085bbf2fe42d3a341bfff4a4800ef1957655443638522c4c73e02c"
                ),
            },
            id="bsd-followed-by-wget-output",
        ),
        pytest.param(
            "centos-stream/centos-stream9-x86_64.checksum",
            "bsd",
            5,
            {
                "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2": (
                    "bcebdc00511d6e18782732570056cfbc7cba318302748bfc8f66be9c0db68142"
                ),
            },
            id="centos-stream-9",
        ),
        pytest.param(
            "centos-stream/centos-stream9-aarch64.checksum",
            "bsd",
            56,
            {
                "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2": (
                    "66dd927b7aa643b18ad21a9368571c6ef57cc381b4febc8934397b137f14b995"
                ),
                "CentOS-Stream-GenericCloud-9-20240401.0.aarch64.qcow2": (
                    "66dd927b7aa643b18ad21a9368571c6ef57cc381b4febc8934397b137f14b995"
                ),
            },
            id="centos-stream-9-many-snapshots",
        ),
        pytest.param(
            "centos-stream/centos-stream10-x86_64.checksum",
            "bsd",
            10,
            {
                "CentOS-Stream-GenericCloud-10-latest.x86_64.qcow2": (
                    "3cb1310f39d92d34d0ea62c1d6f8943f47dce9df6937adb5bd26af8efa5d921d"
                ),
            },
            id="centos-stream-10",
        ),
        pytest.param(
            "almalinux/almalinux9-x86_64.checksum",
            "gnu",
            6,
            {
                "AlmaLinux-9-GenericCloud-9.8-20260526.x86_64.qcow2": (
                    "c397eed7023e92c841155831b1f47e26300e5bef0f0256c129322307c897a251"
                ),
            },
            id="almalinux-9",
        ),
        pytest.param(
            "almalinux/almalinux10-s390x.checksum",
            "gnu",
            2,
            {
                "AlmaLinux-10-GenericCloud-10.2-20260526.0.s390x.qcow2": (
                    "db1f7e8247e150e6da902da348f6894960bfd3590001207d0bf3732992d98ac7"
                ),
            },
            id="almalinux-10-no-trailing-newline",
        ),
        pytest.param(
            "ubuntu/SHA256SUM",
            "gnu",
            37,
            {
                "ubuntu-22.04-server-cloudimg-amd64.img": (
                    "de5e632e17b8965f2baf4ea6d2b824788e154d9a65df4fd419ec4019898e15cd"
                ),
                "ubuntu-22.04-server-cloudimg-arm64.img": (
                    "66224c7fed99ff5a5539eda406c87bbfefe8af6ff6b47d92df3187832b5b5d4f"
                ),
                "ubuntu-22.04-server-cloudimg-s390x.img": (
                    "192c18a58917622e12a3bb6aaf246fcc6a76d9562eb9f49d34df81fbc59610af"
                ),
            },
            id="ubuntu-binary-mode-star",
        ),
        pytest.param(
            "opensuse-leap/openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2.sha256",
            "gnu",
            1,
            {
                "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2": (
                    "0f7f09a9a083088b51aa365fe0e4310e6b156c2153d6aa03a77b81eee884e52a"
                ),
            },
            id="leap-15-one-space",
        ),
        pytest.param(
            "opensuse-leap/Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2.sha256",
            "gnu",
            1,
            {
                "Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2": (
                    "647bc07f1c21b02f703f2545a5808247d3faaba61bf20f59997855d1bbc390b7"
                ),
            },
            id="leap-16",
        ),
        pytest.param(
            "opensuse-tumbleweed/tumbleweed.SHA256SUM",
            "gnu",
            35,
            {
                "openSUSE-Tumbleweed-Minimal-VM.x86_64-1.0.0-Cloud-Snapshot20240629.qcow2": (
                    "e8150b4a7ce5c56587492c930af094236c7a095149d714c015e6860ce6c58e66"
                ),
            },
            id="tumbleweed",
        ),
        pytest.param(
            "opensuse-microos/microos-s390x.SHA256SUM",
            "gnu",
            18,
            {
                "openSUSE-MicroOS.s390x-16.0.0-s390x-Cloud-Snapshot20260207.qcow2": (
                    "59d312f3f366ac9730343a27479f777319b591f93c4027c8702b7d794f123288"
                ),
            },
            id="microos-s390x",
        ),
        pytest.param(
            "opensuse-microos/microos.SHA256SUM",
            "gnu",
            72,
            {
                "openSUSE-MicroOS.x86_64-16.0.0-OpenStack-Cloud-Snapshot20260207.qcow2": (
                    "bbc3613dfd22dac14d499afc44d1b67a8d6c8c2f77db71c4eb87887081104b7b"
                ),
            },
            id="microos",
        ),
    ],
)
def test_real_files(fixture: str, fmt: str, count: int, entries: dict[str, str]) -> None:
    parsed = parse_checksum_file(read(fixture), fmt)
    assert count == len(parsed)
    assert entries == {name: parsed[name] for name in entries}
    assert all(len(h) == 64 and h == h.lower() for h in parsed.values())


def test_broken_file_skips_wget_noise() -> None:
    """The wget log appended to the file (URL, IP addresses, progress bar) yields no entry."""
    parsed = parse_checksum_file(read("hashsum/broken.checksum"), ChecksumFormat.BSD)
    expected = [
        "CentOS-Stream-Container-Base-9-20211119.0.x86_64.tar.xz",
        "CentOS-Stream-GenericCloud-9-20211119.0.x86_64.qcow2",
        "CentOS-Stream-Vagrant-9-20211119.0.x86_64.vagrant-libvirt.box",
        "CentOS-Stream-Vagrant-9-20211119.0.x86_64.vagrant-virtualbox.box",
        "CentOS-Stream-ec2-9-20211119.0.x86_64.raw.xz",
    ]
    assert expected == sorted(parsed)


def test_fedora_clearsigned_checksum() -> None:
    """Fedora's CHECKSUM files: BSD lines inside PGP clearsign armor (layout as published)."""
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\n"
        "Hash: SHA256\n"
        "\n"
        "# Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2: 397475840 bytes\n"
        "SHA256 (Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2) = "
        "ac58f3c35b73272d5986fa6d3bc44fd246b45df4c334e99a07b3bbd00684adee\n"
        "-----BEGIN PGP SIGNATURE-----\n"
        "\n"
        "iQIzBAEBCAAdFiEEEV35rO/lwo6PXVaXGBeyLTV4mDcFAmYjbHAACgkQGBeyLTV4\n"
        "=Yx1b\n"
        "-----END PGP SIGNATURE-----\n"
    )
    expected = {
        "Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2": (
            "ac58f3c35b73272d5986fa6d3bc44fd246b45df4c334e99a07b3bbd00684adee"
        )
    }
    assert expected == parse_checksum_file(text, "bsd")


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        pytest.param(
            "SHA256 (a.img) = " + "AB" * 32 + "\n",
            "bsd",
            {"a.img": "ab" * 32},
            id="bsd-uppercase-hex",
        ),
        pytest.param(
            "AB" * 32 + " *a.img\r\n", "gnu", {"a.img": "ab" * 32}, id="gnu-crlf-uppercase"
        ),
        pytest.param("SHA512 (a.img) = " + "c" * 128, "bsd", {"a.img": "c" * 128}, id="bsd-sha512"),
        pytest.param("d" * 128 + "  a.img", "gnu", {"a.img": "d" * 128}, id="gnu-sha512"),
        pytest.param(
            "SHA256 (a.img) = " + "1" * 64 + "\nSHA256 (a.img) = " + "2" * 64 + "\n",
            "bsd",
            {"a.img": "2" * 64},
            id="a-name-listed-twice-keeps-the-last",
        ),
        pytest.param("  " + "e" * 64 + "  a.img  \n", "gnu", {"a.img": "e" * 64}, id="trimmed"),
    ],
)
def test_line_rules(text: str, fmt: str, expected: dict[str, str]) -> None:
    assert expected == parse_checksum_file(text, fmt)


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        pytest.param(
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
            "<body><h1>Not Found</h1></body></html>\n",
            "bsd",
            "no BSD checksum line found",
            id="html-error-page",
        ),
        pytest.param("", "gnu", "no GNU checksum line found", id="empty"),
        # A file in the other format has no line of the expected one.
        pytest.param(
            read("hashsum/bsd.checksum"), "gnu", "no GNU checksum line found", id="bsd-read-as-gnu"
        ),
        pytest.param(
            read("hashsum/gnu.checksum"), "bsd", "no BSD checksum line found", id="gnu-read-as-bsd"
        ),
        # A truncated hex is not a GNU line.
        pytest.param("ab" * 31 + "  a.img\n", "gnu", "no GNU checksum line found", id="short-hex"),
    ],
)
def test_a_malformed_checksum_file_is_refused_saying_why(text: str, fmt: str, message: str) -> None:
    with pytest.raises(ChecksumParseError) as err:
        parse_checksum_file(text, fmt)
    assert message == str(err.value)


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("SHA256 (a.img) = " + "1" * 64 + "\nSHA256 (b.img) = " + "3" * 64
         + "\nSHA256 (a.img) = " + "2" * 64 + "\n", "bsd"),
        ("1" * 64 + "  a.img\n" + "1" * 64 + " *a.img\n", "gnu"),  # even with the same hex
    ],
    ids=["bsd", "gnu-same-checksum"],
)  # fmt: skip
def test_a_name_listed_twice_is_refused_when_unique(text: str, fmt: str) -> None:
    """A signed file vouches for one checksum per name: which of two to take is not ours."""
    with pytest.raises(ChecksumParseError) as err:
        parse_checksum_file(text, fmt, unique=True)
    assert "'a.img' is listed twice" == str(err.value)
    assert "a.img" in parse_checksum_file(text, fmt)  # unsigned files: last wins, as medius


def test_an_unknown_checksum_format_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="'md5'"):
        parse_checksum_file("", "md5")


# -- upstream text is data, never structure ----------------------------------------------------

GOOD = "a" * 64
EVIL = "b" * 64


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
)
@pytest.mark.parametrize("fmt", ["gnu", "bsd"])
def test_only_newline_ends_a_line(separator: str, fmt: str) -> None:
    """str.splitlines would split at these: the second "line" would inject another hash."""
    if fmt == "gnu":
        text = f"{GOOD}  good.img{separator}{EVIL}  evil.img\nx\r\n{GOOD}  other.img\r\n"
    else:
        text = f"SHA256 (good.img) = {GOOD}{separator}SHA256 (evil.img) = {EVIL}\n"
        text += f"SHA256 (other.img) = {GOOD}\r\n"
    sums = parse_checksum_file(text, fmt)
    assert {"other.img": GOOD} == sums
    assert EVIL not in sums.values()


@pytest.mark.parametrize(
    "name",
    [
        "../image.qcow2",
        "..",
        ".",
        "a..b.qcow2",
        "dir/image.qcow2",
        "https://evil.example/image.qcow2",
        "%2e%2e/x",
        "..\\image.qcow2",
        "c:\\image.qcow2",
        "image\x00.qcow2",
        "image\x1b[31m.qcow2",
        "image\x7f.qcow2",
        "image\x9b.qcow2",
        "image\u2028.qcow2",
        "x" * 252 + ".img",  # 256 bytes
        "é" * 128,  # 128 characters, 256 bytes
    ],
)
@pytest.mark.parametrize("fmt", ["gnu", "bsd"])
def test_names_that_are_not_plain_file_names_are_refused(name: str, fmt: str) -> None:
    line = f"{EVIL}  {name}" if fmt == "gnu" else f"SHA256 ({name}) = {EVIL}"
    text = f"{line}\n" + (f"{GOOD}  ok.img\n" if fmt == "gnu" else f"SHA256 (ok.img) = {GOOD}\n")
    assert file_name_problem(name) is not None
    assert {"ok.img": GOOD} == parse_checksum_file(text, fmt)
    with pytest.raises(ChecksumParseError):
        parse_checksum_file(f"{line}\n", fmt)


@pytest.mark.parametrize("name", ["x" * 251 + ".img", "é" * 127 + "x", "a.b-c_d+e~1.qcow2"])
def test_plain_names_up_to_255_bytes_are_kept(name: str) -> None:
    assert file_name_problem(name) is None
    assert {name: GOOD} == parse_checksum_file(f"{GOOD} *{name}\n", "gnu")
