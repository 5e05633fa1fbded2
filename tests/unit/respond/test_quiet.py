"""Quiet sources from the detection loop: which settings allow it, one message per turn for
what was muted, nothing sent twice while an element lasts, releases and reloads that take
sources out, and refusals that are said and leave detection as it was. The writer is a
stand-in recording what it was given; the real netlink path is
tests/e2e/test_block_nfnetlink_live.py and the whole feature tests/e2e/test_quiet.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from portsentinel.block.nfnetlink import Element
from portsentinel.config.schema import Settings
from portsentinel.config.types import Backend as BackendName
from portsentinel.errors import BackendError
from portsentinel.respond.quiet import FAILURES_LOGGED, Quiet, eligible

A4, B4 = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 3])
A6 = bytes.fromhex("fd00" + "00" * 13 + "02")
TCP, UDP = 6, 17


class Writer:
    def __init__(self) -> None:
        self.adds: list[tuple[str, list[Element]]] = []
        self.deletes: list[tuple[str, bytes]] = []
        self.refuse = False
        self.closed = False

    def add(self, set_name: str, elements: Sequence[Element]) -> None:
        if self.refuse:
            raise BackendError("nfnetlink: cannot add: No such file or directory")
        self.adds.append((set_name, list(elements)))

    def delete(self, set_name: str, keys: Sequence[bytes]) -> int:
        self.deletes += [(set_name, key) for key in keys]
        return len(keys)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(seconds: float = 10.0) -> tuple[Quiet, Writer, Clock, list[str]]:
    writer, clock, lines = Writer(), Clock(), list[str]()
    return Quiet(seconds, lines.append, writer, clock), writer, clock, lines  # type: ignore[arg-type]


def settings(**kw: object) -> Settings:
    return dataclasses.replace(Settings(), **kw)  # type: ignore[arg-type]


def test_quiet_needs_the_nftables_backend_a_real_run_and_a_time() -> None:
    assert eligible(settings(), dry_run=False)
    assert not eligible(settings(), dry_run=True)
    assert not eligible(settings(quiet_repeats=0.0), dry_run=False)
    assert not eligible(settings(block_backend=BackendName.IPTABLES), dry_run=False)


def test_a_turns_sources_go_in_one_message_per_set_with_the_quiet_time() -> None:
    quiet, writer, _clock, _lines = make(seconds=7.5)
    quiet.add([(A4, TCP), (A6, UDP), (B4, UDP)])
    assert writer.adds == [
        ("quiet4", [(A4 + bytes([TCP, 0, 0, 0]), 7500), (B4 + bytes([UDP, 0, 0, 0]), 7500)]),
        ("quiet6", [(A6 + bytes([UDP, 0, 0, 0]), 7500)]),
    ]
    assert quiet.added == 3


def test_a_source_already_quiet_is_not_sent_again_until_its_element_ends() -> None:
    quiet, writer, clock, _lines = make(seconds=10.0)
    quiet.add([(A4, TCP)])
    quiet.add([(A4, TCP), (A4, TCP)])
    assert len(writer.adds) == 1
    clock.now += 10.0
    quiet.add([(A4, TCP)])
    assert len(writer.adds) == 2


def test_a_release_takes_the_sources_live_elements_out() -> None:
    quiet, writer, clock, _lines = make(seconds=10.0)
    quiet.add([(A4, TCP), (A4, UDP), (B4, TCP)])
    quiet.release(A4)
    assert writer.deletes == [
        ("quiet4", A4 + bytes([TCP, 0, 0, 0])),
        ("quiet4", A4 + bytes([UDP, 0, 0, 0])),
    ]
    quiet.add([(A4, TCP)])  # judged again and muted again: quiet again at once
    assert len(writer.adds) == 2
    clock.now += 11.0
    quiet.release(B4)  # its element already ended: nothing to delete
    assert len(writer.deletes) == 2


def test_a_reload_empties_the_sets_of_what_is_still_quiet() -> None:
    quiet, writer, clock, _lines = make(seconds=10.0)
    quiet.add([(A4, TCP)])
    clock.now += 5.0
    quiet.add([(A6, UDP)])
    clock.now += 6.0  # A4's element has ended, A6's has not
    quiet.clear()
    assert writer.deletes == [("quiet6", A6 + bytes([UDP, 0, 0, 0]))]
    quiet.add([(A4, TCP)])
    assert len(writer.adds) == 3


def test_refusals_are_said_a_few_times_and_nothing_is_taken_as_quiet() -> None:
    quiet, writer, _clock, lines = make()
    writer.refuse = True
    for _ in range(FAILURES_LOGGED + 2):
        quiet.add([(A4, TCP)])
    assert quiet.refused == FAILURES_LOGGED + 2
    assert len(lines) == FAILURES_LOGGED
    assert "the daemon goes on reading their probes" in lines[0]
    assert quiet.added == 0
    writer.refuse = False
    quiet.add([(A4, TCP)])  # the table is back: it works again
    assert quiet.added == 1


def test_the_loops_memory_of_quiet_sources_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    quiet, writer, clock, _lines = make(seconds=10.0)
    monkeypatch.setattr("portsentinel.respond.quiet.CAP", 4)
    quiet.add([(bytes([198, 18, 1, n]), TCP) for n in range(3)])
    quiet.add([(bytes([198, 18, 2, n]), TCP) for n in range(3)])  # one more fits
    assert sum(len(elements) for _, elements in writer.adds) == 4
    quiet.add([(bytes([198, 18, 2, 9]), TCP)])  # full: nothing sent
    assert sum(len(elements) for _, elements in writer.adds) == 4
    clock.now += 11.0  # all ended: room again
    quiet.add([(bytes([198, 18, 3, n]), TCP) for n in range(3)])
    assert sum(len(elements) for _, elements in writer.adds) == 7
    quiet.close()
    assert writer.closed
