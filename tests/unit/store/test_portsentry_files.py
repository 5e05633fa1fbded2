"""History/blocked lines in PortSentry 1.2's format, and fail2ban's stock filter on them."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from portsentinel.model import Mode, Proto
from portsentinel.store.portsentry_files import (
    PortSentryFiles,
    blocked_addresses,
    blocked_file_path,
    history_line,
    parse_line,
    read_blocked_2_0,
)

# fail2ban's config/filter.d/portsentry.conf: failregex = \/<HOST> Port\: [0-9]+ (TCP|UDP) Blocked$
# with <HOST> expanded as fail2ban does (IPv4, optionally IPv4-mapped; IPv6; or a DNS name), and
# its date pattern {^LN-BEG}Epoch: an epoch number at the start of the line.
_F2B_HOST = (
    r"(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})"
    r"|\[?(?P<ip6>(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):))\]?"
    r"|(?P<dns>[\w\-.^_]*\w))"
)
FAIL2BAN = re.compile(r"\/" + _F2B_HOST + r" Port\: [0-9]+ (TCP|UDP) Blocked$")
EPOCH_AT_START = re.compile(r"^\d{10}\b")


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        time.tzset()
        yield
    time.tzset()


def test_line_is_byte_for_byte_the_12_format() -> None:
    line = history_line(1403884279.9, "192.168.56.1", "192.168.56.1", 1, Proto.TCP)
    assert (
        line
        == "1403884279 - 06/27/2014 15:51:19 Host: 192.168.56.1/192.168.56.1 Port: 1 TCP Blocked"
    )


@pytest.mark.parametrize(
    ("name", "ip", "proto"),
    [
        ("198.18.0.2", "198.18.0.2", Proto.TCP),
        ("scanner.example", "198.18.0.2", Proto.UDP),
        ("fd00:5e::2", "fd00:5e::2", Proto.TCP),
    ],
)
def test_fail2ban_stock_filter_finds_the_host(name: str, ip: str, proto: Proto) -> None:
    line = history_line(1764106000, name, ip, 31337, proto)
    match = FAIL2BAN.search(line)
    assert match is not None
    assert ip in {match["ip4"], match["ip6"]}
    assert EPOCH_AT_START.match(line)


def test_fail2ban_filter_rejects_other_lines() -> None:
    assert FAIL2BAN.search("attackalert: TCP SYN/Normal scan from host: 1.2.3.4/1.2.3.4") is None


def test_parse_round_trip_and_exact_blocked_check() -> None:
    lines = [
        history_line(1764106000, "11.2.3.4", "11.2.3.4", 80, Proto.TCP),
        history_line(1764106001, "host.example", "fd00:5e::2", 53, Proto.UDP),
        "garbage line",
        "",
    ]
    assert parse_line(lines[0]) == (1764106000, "11.2.3.4", 80, Proto.TCP)
    assert parse_line(lines[1]) == (1764106001, "fd00:5e::2", 53, Proto.UDP)
    assert parse_line(lines[2]) is None
    listed = blocked_addresses(lines)
    assert listed == frozenset({"11.2.3.4", "fd00:5e::2"})
    # 1.2's substring test would call 1.2.3.4 blocked because 11.2.3.4 is listed; we do not.
    assert "1.2.3.4" not in listed


def test_blocked_file_is_per_mode() -> None:
    assert blocked_file_path("/var/lib/portsentry/portsentry.blocked", Mode.ATCP) == (
        "/var/lib/portsentry/portsentry.blocked.atcp"
    )


def test_files_are_appended_per_mode_and_lifted_exactly(tmp_path: Path) -> None:
    history = tmp_path / "portsentry.history"
    blocked = tmp_path / "portsentry.blocked"
    files = PortSentryFiles(str(history), str(blocked))
    files.record(1764106000, "11.2.3.4", "11.2.3.4", 80, Proto.TCP, mode=Mode.ATCP)
    files.record(1764106001, "1.2.3.4", "1.2.3.4", 53, Proto.UDP, mode=Mode.AUDP)
    files.record(1764106002, "1.2.3.4", "1.2.3.4", 22, Proto.TCP, mode=Mode.ATCP)
    assert len(history.read_text().splitlines()) == 3
    atcp = tmp_path / "portsentry.blocked.atcp"
    assert blocked_addresses(atcp.read_text().splitlines()) == {"11.2.3.4", "1.2.3.4"}
    files.remove_blocked("1.2.3.4")
    assert blocked_addresses(atcp.read_text().splitlines()) == {"11.2.3.4"}
    assert (tmp_path / "portsentry.blocked.audp").read_text() == ""
    assert len(history.read_text().splitlines()) == 3  # the history keeps everything


def test_files_do_not_grow_without_bound(tmp_path: Path) -> None:
    history = tmp_path / "history"
    files = PortSentryFiles(str(history), "", max_bytes=1000)
    for i in range(100):
        files.record(1764106000 + i, "198.18.0.2", "198.18.0.2", i, Proto.TCP, mode=Mode.ATCP)
    assert history.stat().st_size <= 1000
    assert (tmp_path / "history.1").stat().st_size <= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history", "history.1"]


def test_history_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "history"
    link.symlink_to(target)
    files = PortSentryFiles(str(link), "")
    with pytest.raises(OSError, match=r"symbolic link|Too many levels"):
        files.record(1764106000, "198.18.0.2", "198.18.0.2", 1, Proto.TCP, mode=Mode.ATCP)
    assert target.read_text() == ""


def blocked_2_0(*addresses: str, order: Literal["little", "big"] = "little") -> bytes:
    """Records as PortSentry 2.0 writes them (sa_family_t in host order, then the address)."""
    out = b""
    for text in addresses:
        address = ipaddress.ip_address(text)
        family = 2 if address.version == 4 else 10
        out += family.to_bytes(2, order) + address.packed
    return out


def test_2_0s_binary_blocked_file_is_read_in_order_each_address_once() -> None:
    data = blocked_2_0("192.0.2.7", "2001:db8::1", "192.0.2.7", "198.51.100.1")
    assert read_blocked_2_0(data, "little") == (["192.0.2.7", "2001:db8::1", "198.51.100.1"], 0)
    big = blocked_2_0("192.0.2.7", order="big")
    assert read_blocked_2_0(big, "big") == (["192.0.2.7"], 0)
    assert read_blocked_2_0(b"", "little") == ([], 0)


def test_2_0s_blocked_file_with_a_corrupt_tail_keeps_the_whole_records() -> None:
    data = blocked_2_0("192.0.2.7", "2001:db8::1")
    assert read_blocked_2_0(data + b"\x02\x00\xc0", "little") == (["192.0.2.7", "2001:db8::1"], 3)
    assert read_blocked_2_0(data + b"\x07", "little") == (["192.0.2.7", "2001:db8::1"], 1)
    unknown = b"\x09\x00" + bytes(4)  # no such family: the rest is not trusted
    assert read_blocked_2_0(unknown + data, "little") == ([], len(unknown + data))
