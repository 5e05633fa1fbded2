"""The detection loop's own way to the kernel for a first ban: which settings allow it, the
turn's first ban sent at once and the rest at the turn's end, what the worker is told, and a
refusal that leaves the ban to the worker. The writer is a stand-in recording what it was
given; the real netlink path is tests/e2e/test_block_nfnetlink_live.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from portsentinel.block.nfnetlink import Element
from portsentinel.config.schema import Settings
from portsentinel.config.types import Backend as BackendName
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.respond.bans import BanRequest
from portsentinel.respond.first_ban import HOLD_MAX, FirstBan, eligible, host_key


class Writer:
    def __init__(self, refuse: bool = False) -> None:
        self.adds: list[tuple[str, list[Element]]] = []
        self.refuse = refuse
        self.closed = False
        self.prepared: list[tuple[str, int, int | None]] = []
        self.copies: list[tuple[str, list[Element]]] = []
        self.refuse_copies = False

    def add(self, set_name: str, elements: Sequence[Element]) -> None:
        if self.refuse:
            raise BackendError("nfnetlink: cannot add: No such file or directory")
        if elements:
            self.adds.append((set_name, list(elements)))

    def add_one(
        self, set_name: str, key: bytes, timeout_ms: int | None, *, mirror: bool = True
    ) -> None:
        assert not mirror  # the turn's first: the inet set alone, its copy at the turn's end
        self.add(set_name, [(key, timeout_ms)])

    def copy(self, set_name: str, elements: Sequence[Element]) -> bool:
        if self.refuse_copies:
            raise BackendError("nfnetlink: cannot add to portsentinel ban4: Device busy")
        self.copies.append((set_name, list(elements)))
        return True

    def prepare(
        self, set_name: str, key_size: int, timeout_ms: int | None, *, mirror: bool = True
    ) -> None:
        self.prepared.append((set_name, key_size, timeout_ms))

    def open(self) -> None:
        if self.refuse:
            raise BackendError("nfnetlink: cannot open a socket: Permission denied")

    def close(self) -> None:
        self.closed = True


def settings(**kw: object) -> Settings:
    return dataclasses.replace(Settings(), **kw)  # type: ignore[arg-type]


def request(address: str = "198.18.0.2", level: int = 1, **kw: object) -> BanRequest:
    return BanRequest(address, 79, Proto.TCP, Mode.ATCP, level, "SYN scan", None, {}, **kw)  # type: ignore[arg-type]


def first_ban(s: Settings, writer: Writer) -> tuple[FirstBan, list[str]]:
    lines: list[str] = []
    return FirstBan(s, lines.append, writer), lines  # type: ignore[arg-type]


def test_only_an_nftables_block_without_a_command_first_goes_ahead_of_the_worker() -> None:
    assert eligible(settings())
    assert not eligible(settings(kill_run_cmd_first=True, kill_run_cmd="/bin/true $TARGET$"))
    assert not eligible(settings(block_backend=BackendName.LEGACY, kill_route="/bin/true"))
    assert not eligible(settings(block_backend=BackendName.IPTABLES))


def test_the_turns_first_ban_goes_at_once_the_others_at_the_turns_end() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(ban_duration=3600.0), writer)
    sent: list[BanRequest] = []
    fast.take(request("198.18.0.2"), sent.extend)
    assert writer.adds == [("ban4", [(bytes([198, 18, 0, 2]), 3_600_000)])]
    assert sent[0].in_kernel
    assert sent[0].kernel_timeout == 3600
    fast.take(request("198.18.0.3"), sent.extend)
    fast.take(request("fd00:5e::3"), sent.extend)
    assert len(writer.adds) == 1
    assert len(sent) == 1
    fast.end_turn(sent.extend)
    assert writer.adds[1:] == [
        ("ban4", [(bytes([198, 18, 0, 3]), 3_600_000)]),
        ("ban6", [(bytes.fromhex("fd00005e" + "00" * 11 + "03"), 3_600_000)]),
    ]
    assert [r.address for r in sent] == ["198.18.0.2", "198.18.0.3", "fd00:5e::3"]
    assert all(r.in_kernel for r in sent)
    fast.take(request("198.18.0.4"), sent.extend)  # a new turn: at once again
    assert len(writer.adds) == 4
    assert fast.applied == 4


def test_a_flood_of_first_bans_in_one_turn_goes_in_batches() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(), writer)
    sent: list[BanRequest] = []
    for n in range(HOLD_MAX + 1):
        fast.take(request(f"198.19.{n // 256}.{n % 256}"), sent.extend)
    assert [len(elements) for _, elements in writer.adds] == [1, HOLD_MAX]
    fast.end_turn(sent.extend)
    assert len(sent) == HOLD_MAX + 1


def test_a_permanent_ban_has_no_timeout_and_a_mapped_address_is_ipv4() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(ban_duration=None), writer)
    sent: list[BanRequest] = []
    fast.take(request("::ffff:198.18.0.9"), sent.extend)
    assert writer.adds == [("ban4", [(bytes([198, 18, 0, 9]), None)])]
    assert sent[0].in_kernel
    assert sent[0].kernel_timeout is None


def test_what_only_the_worker_may_decide_goes_to_it_untouched() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(ipv6_prefix_after=3), writer)
    sent: list[BanRequest] = []
    fast.take(request("fd00:5e::3"), sent.extend)  # may widen to a prefix
    fast.take(request("198.18.0.2", level=2), sent.extend)  # BLOCK_x=2: the command only
    fast.take(request("198.18.0.5", manual=True, duration=60.0), sent.extend)
    fast.end_turn(sent.extend)
    assert writer.adds == []
    assert not any(r.in_kernel for r in sent)
    assert len(sent) == 3
    fast.take(request("198.18.0.2"), sent.extend)  # IPv4 still goes ahead
    assert writer.adds == [("ban4", [(bytes([198, 18, 0, 2]), 3600_000)])]


def test_a_refused_element_leaves_the_ban_to_the_worker_and_says_so_once() -> None:
    writer = Writer(refuse=True)
    fast, lines = first_ban(settings(), writer)
    sent: list[BanRequest] = []
    for n in range(3):
        fast.take(request(f"198.18.0.{n + 2}"), sent.extend)
        fast.end_turn(sent.extend)
    assert [r.in_kernel for r in sent] == [False, False, False]
    assert fast.refused == 3
    assert fast.applied == 0
    assert len(lines) == 1
    assert "response worker applies them" in lines[0]


def test_a_reload_turns_the_path_off_and_on() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(), writer)
    fast.reconfigure(settings(block_backend=BackendName.LEGACY, kill_route="/bin/true"))
    sent: list[BanRequest] = []
    fast.take(request(), sent.extend)
    assert writer.adds == []
    assert not sent[0].in_kernel
    fast.reconfigure(settings(ban_duration=60.0))
    fast.end_turn(sent.extend)
    fast.take(request("198.18.0.3"), sent.extend)
    assert writer.adds == [("ban4", [(bytes([198, 18, 0, 3]), 60_000)])]
    fast.close()
    assert writer.closed


def test_a_decoys_first_ban_has_the_decoy_timeout() -> None:
    """A decoy group's member without proof: DECOY_BAN_DURATION, even where bans are
    permanent; the worker records the same length (no renewal needed)."""
    writer = Writer()
    fast, _lines = first_ban(settings(ban_duration=None, decoy_ban_duration=300.0), writer)
    sent: list[BanRequest] = []
    fast.take(request("198.18.0.3", decoy=True), sent.extend)
    assert writer.adds == [("ban4", [(bytes([198, 18, 0, 3]), 300_000)])]
    assert sent[0].kernel_timeout == 300


def test_the_evidence_is_gathered_after_the_turns_first_element_and_goes_with_it() -> None:
    writer = Writer()
    fast, _lines = first_ban(settings(), writer)
    sent: list[BanRequest] = []
    asked: list[int] = []

    def evidence() -> dict[str, object]:
        asked.append(len(writer.adds))  # how many elements were written when it was asked
        return {"hits": 3}

    fast.take(request("198.18.0.2"), sent.extend, evidence)
    fast.take(request("198.18.0.3"), sent.extend, evidence)  # held: gathered at once
    assert asked == [1, 1]
    fast.end_turn(sent.extend)
    assert [r.evidence for r in sent] == [{"hits": 3}, {"hits": 3}]
    assert all(r.in_kernel for r in sent)


def test_the_turns_first_element_was_built_before_it_was_needed() -> None:
    writer = Writer()
    first_ban(settings(ban_duration=600.0), writer)
    assert writer.prepared == [("ban4", 4, 600_000), ("ban6", 16, 600_000)]
    first_ban(settings(block_backend=BackendName.IPTABLES), unused := Writer())
    assert unused.prepared == []


def test_a_refused_first_element_goes_to_the_worker_with_its_evidence() -> None:
    writer = Writer(refuse=True)
    fast, lines = first_ban(settings(), writer)
    sent: list[BanRequest] = []
    fast.take(request("198.18.0.2"), sent.extend, lambda: {"hits": 1})
    assert not sent[0].in_kernel
    assert sent[0].evidence == {"hits": 1}
    assert fast.refused == 1
    assert len(lines) == 1


def test_host_keys_are_plain_addresses_only() -> None:
    assert host_key("198.18.0.2") == bytes([198, 18, 0, 2])
    assert host_key("fd00:5e::3") == bytes.fromhex("fd00005e" + "00" * 11 + "03")
    assert host_key("::ffff:198.18.0.9") is None  # BanSpec maps it to IPv4
    assert host_key("198.18.0.0/24") is None
    assert host_key("example.org") is None


def test_the_ingress_copy_of_a_first_ban_follows_at_the_turns_end() -> None:
    """The turn's first ban is the inet element alone (one table's transaction is the
    shorter); its netdev copy goes when the turn ends, with those of the held bans' turn."""
    writer = Writer()
    fast, lines = first_ban(settings(ban_duration=600.0), writer)
    sent: list[BanRequest] = []
    fast.take(request("198.18.0.2"), sent.extend)
    assert writer.copies == []
    fast.end_turn(sent.extend)
    assert writer.copies == [("ban4", [(bytes([198, 18, 0, 2]), 600_000)])]
    fast.end_turn(sent.extend)  # nothing more to copy
    assert len(writer.copies) == 1
    writer.refuse_copies = True
    fast.take(request("fd00:5e::3"), sent.extend)
    fast.end_turn(sent.extend)
    assert sent[-1].in_kernel  # the ban stands: its inet element is in
    assert lines == [
        "adminalert: WARNING: ingress copies of first bans not written (nfnetlink: cannot add "
        "to portsentinel ban4: Device busy)"
    ]
