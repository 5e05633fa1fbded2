"""Value types: each parses what PortSentry and PortSentinel accept, renders back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.config import types as t
from portsentinel.config.types import Backend, BlockLevel, InvalidValueError


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("1,11,15", {1, 11, 15}),
        ("32771-32774", {32771, 32772, 32773, 32774}),
        ("1, 7 ,9", {1, 7, 9}),
        (" 20 - 22 , 80", {20, 21, 22, 80}),
        ("5-5", {5}),
        ("1,2,", {1, 2}),
        ("65535", {65535}),
        ("80,80,79-81", {79, 80, 81}),
    ],
)
def test_port_list_accepts(text: str, ports: set[int]) -> None:
    assert t.port_list(text) == frozenset(ports)


def test_port_list_has_no_64_entry_limit() -> None:
    text = ",".join(str(p) for p in range(1, 201))
    assert t.port_list(text) == frozenset(range(1, 201))
    assert t.port_list("1-65535") == frozenset(range(1, 65536))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0", "port 0 is out of range"),
        ("65536", "port 65536 is out of range"),
        ("10-5", "range '10-5' runs backwards"),
        ("80,http", "'http' in '80,http' is not a port number"),
        ("1-2-3", "'2-3' in '1-2-3' is not a port number"),
        ("-5", "'' in '-5' is not a port number"),
        ("+5", "'+5' in '+5' is not a port number"),
        ("1 2", "'1 2' in '1 2' is not a port number"),
        (",", "no port in ','"),
        (" , ,", "no port in ' , ,'"),
    ],
)
def test_port_list_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        t.port_list(text)
    assert str(caught.value) == reason


def test_ports_text_compresses_runs_of_three_or_more() -> None:
    assert t.ports_text({1, 2, 5, 6, 7, 9}) == "1,2,5-7,9"
    assert t.ports_text(set()) == ""


@given(st.frozensets(st.integers(1, 65535), min_size=1, max_size=60))
def test_port_list_round_trips(ports: frozenset[int]) -> None:
    assert t.port_list(t.ports_text(ports)) == ports


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("90", 90.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
        (" 2 H ", 7200.0),
    ],
)
def test_duration_units(text: str, seconds: float) -> None:
    assert t.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1s", "1w", "1e3", "permanent", "inf", "3651d"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidValueError):
        t.duration(text)


def test_ban_duration_allows_permanent_but_not_zero() -> None:
    assert t.ban_duration("permanent") is None
    assert t.ban_duration(" PERMANENT ") is None
    assert t.ban_duration("1h") == 3600.0
    with pytest.raises(InvalidValueError, match="zero duration"):
        t.ban_duration("0")
    with pytest.raises(InvalidValueError, match="zero duration"):
        t.positive_duration("0s")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "permanent"), (0.0, "0"), (3600.0, "1h"), (90.0, "90s"), (604800.0, "7d"),
     (120.0, "2m"), (0.25, "0.25s")],
)  # fmt: skip
def test_duration_text(seconds: float | None, text: str) -> None:
    assert t.duration_text(seconds) == text


@given(st.floats(min_value=0, max_value=t.MAX_DURATION, allow_nan=False))
def test_duration_text_round_trips(seconds: float) -> None:
    rendered = t.duration_text(seconds)
    try:
        parsed = t.duration(rendered)
    except InvalidValueError:
        # Only sub-nanosecond fractions have more digits than the grammar takes.
        assert len(rendered.partition(".")[2]) > 10
    else:
        assert parsed == seconds


def test_flags_and_levels() -> None:
    assert t.flag("1") is True
    assert t.flag(" 0 ") is False
    with pytest.raises(InvalidValueError):
        t.flag("yes")
    assert t.nonzero_flag("5") is True  # PortSentry 1.2's atoi != 0
    assert t.nonzero_flag("-1") is True
    assert t.nonzero_flag("0") is False
    with pytest.raises(InvalidValueError):
        t.nonzero_flag("on")
    assert t.block_level("2") is BlockLevel.RUN_CMD_ONLY
    with pytest.raises(InvalidValueError, match="not 0, 1 or 2"):
        t.block_level("3")


def test_integers_numbers_and_enums() -> None:
    assert t.int_range(0, 65535)("65535") == 65535
    with pytest.raises(InvalidValueError, match="out of range"):
        t.int_range(0, 65535)("65536")
    with pytest.raises(InvalidValueError, match="not a whole number"):
        t.int_range(0)("12abc")  # atoi would have read 12; we refuse
    assert t.port_limit("65536") == 65536
    with pytest.raises(InvalidValueError):
        t.port_limit("0")
    factor = t.number_range(1.0, 1000.0)
    assert factor("1.5") == 1.5
    assert factor.render(2.0) == "2"
    with pytest.raises(InvalidValueError):
        factor("0.5")
    assert t.backend("NFTables") is Backend.NFTABLES
    with pytest.raises(InvalidValueError, match="not a known backend"):
        t.backend("pf")


def test_text_types_keep_empty_and_paths_are_trimmed() -> None:
    assert t.text("  hi  ") == "  hi  "
    assert t.command("") == ""
    assert t.path(" /etc/x ") == "/etc/x"
    assert [t.path.text, t.command.text, t.port_list.text] == [True, True, False]
