"""Which ports each mode watches, and the lookup tables built from them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portsentinel.detect.ports import (
    PORT_SPACE,
    bound_table,
    mode_ports,
    port_table,
    stealth_table,
)
from portsentinel.model import Mode

LISTED = frozenset({1, 79, 111, 31337})


def watched(table: bytearray) -> set[int]:
    return {port for port in range(PORT_SPACE) if table[port]}


@pytest.mark.parametrize("mode", [Mode.TCP, Mode.STCP, Mode.UDP, Mode.SUDP])
def test_listed_modes_watch_the_list(mode: Mode) -> None:
    assert mode_ports(mode, LISTED, 1024, {79}) == sorted(LISTED)


@pytest.mark.parametrize("mode", [Mode.ATCP, Mode.AUDP])
def test_advanced_modes_watch_below_the_limit_minus_excludes(mode: Mode) -> None:
    ports = mode_ports(mode, LISTED, 1024, {113, 139, 5000})
    assert ports[0] == 0  # port 0 is below the limit too
    assert ports[-1] == 1023
    assert 1024 not in ports
    assert 113 not in ports
    assert 139 not in ports
    assert len(ports) == 1022


def test_advanced_limits_at_the_edges() -> None:
    assert mode_ports(Mode.ATCP, (), 0, ()) == []
    assert mode_ports(Mode.ATCP, (), 1, ()) == [0]
    assert len(mode_ports(Mode.ATCP, (), 10**6, ())) == PORT_SPACE


def test_no_mode_watches_nothing() -> None:
    assert mode_ports(None, LISTED, 1024, ()) == []


@pytest.mark.parametrize("bad", [-1, 65536])
def test_ports_outside_the_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        port_table([bad])
    with pytest.raises(ValueError, match="outside"):
        mode_ports(Mode.STCP, [bad], 0, ())
    with pytest.raises(ValueError, match="outside"):
        mode_ports(Mode.ATCP, (), 1024, [bad])


def test_port_table_marks_exactly_the_ports() -> None:
    table = port_table(LISTED)
    assert len(table) == PORT_SPACE
    assert watched(table) == set(LISTED)


def test_stealth_table_is_empty_for_bound_modes_and_none() -> None:
    assert watched(stealth_table(Mode.TCP, LISTED, 1024, ())) == set()
    assert watched(stealth_table(None, LISTED, 1024, ())) == set()
    assert watched(stealth_table(Mode.STCP, LISTED, 1024, ())) == set(LISTED)
    assert watched(stealth_table(Mode.AUDP, LISTED, 3, {1})) == {0, 2}


def test_bound_table_is_empty_for_stealth_modes_and_none() -> None:
    assert watched(bound_table(Mode.UDP, LISTED)) == set(LISTED)
    assert watched(bound_table(Mode.SUDP, LISTED)) == set()
    assert watched(bound_table(Mode.AUDP, LISTED)) == set()
    assert watched(bound_table(None, LISTED)) == set()


@given(
    mode=st.sampled_from(list(Mode)),
    limit=st.integers(-5, PORT_SPACE + 5),
    exclude=st.sets(st.integers(0, PORT_SPACE - 1), max_size=20),
    listed=st.sets(st.integers(0, PORT_SPACE - 1), max_size=20),
)
@settings(max_examples=100, deadline=None)
def test_stealth_table_marks_exactly_the_modes_ports(
    mode: Mode, limit: int, exclude: set[int], listed: set[int]
) -> None:
    table = stealth_table(mode, listed, limit, exclude)
    expected = set() if mode.bound else set(mode_ports(mode, listed, limit, exclude))
    assert len(table) == PORT_SPACE
    assert {port for port, flag in enumerate(table) if flag} == expected
    assert set(table) <= {0, 1}
