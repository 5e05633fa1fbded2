"""The store's records: built from decisions, mapped to and from rows, and what they say."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from portsentinel.model import Action, Decision, Mode, Proto, Reason, ScanKind
from portsentinel.store.records import (
    ACTION_COLS,
    BAN_COLS,
    EVENT_COLS,
    ActionState,
    BanRecord,
    BanState,
    DamagedRowError,
    EventRow,
    action_from_row,
    ban_from_row,
    event_from_row,
    to_json,
)

T0 = 1_700_000_000.0


def decision(proto: Proto, flags: int = 0) -> Decision:
    return Decision(
        T0, "198.18.0.7", "198.18.0.1", proto, 22, ScanKind.SYN, Action.BLOCK, Reason.TRIGGERED,
        flags=flags, ip_options=True, mode=Mode.ATCP, rule="atcp", hits=3, ports_seen=2,
    )  # fmt: skip


def test_an_event_row_from_a_tcp_decision_names_its_flags() -> None:
    row = EventRow.from_decision(decision(Proto.TCP, flags=0x12), T0 + 5)
    assert row == EventRow(
        T0 + 5, "198.18.0.7", "198.18.0.1", "tcp", 22, "SYN", "block", "scan trigger reached",
        "atcp", "atcp", 3, 2, "SYN|ACK", True,
    )  # fmt: skip


def test_an_event_row_from_a_udp_decision_has_no_flags_and_no_mode_when_none() -> None:
    d = decision(Proto.UDP)
    d.mode = None
    row = EventRow.from_decision(d, T0)
    assert (row.proto, row.flags, row.mode) == ("udp", None, None)


def test_rows_map_back_to_records_column_for_column() -> None:
    assert len(EVENT_COLS.split(", ")) == len(EventRow.__slots__)
    event = event_from_row(
        (T0, "a", "b", "tcp", 1, "SYN", "alert", "below trigger", None, None, 0, 0, None, 0,
         None, None, None, None)
    )  # fmt: skip
    assert event.ip_options is False
    assert event == EventRow(T0, "a", "b", "tcp", 1, "SYN", "alert", "below trigger")
    scored = event_from_row(
        (T0, "a", "b", "tcp", 1, "SYN", "block", "scan trigger reached", "atcp", "trw", 4, 4,
         "SYN", 0, 256.0, 4, "nmap", "a c")
    )  # fmt: skip
    assert (scored.score, scored.contacts, scored.scanner) == (256.0, 4, "nmap")
    assert scored.group == "a c"
    evidence = to_json({"ports": [2, 1], "hits": 3})
    ban = ban_from_row(
        (7, "2001:db8::", 64, T0, None, "active", "scan", "atcp", evidence, 2, None, None, 1)
    )
    assert len(BAN_COLS.split(", ")) == len(BanRecord._fields)
    assert (ban.id, ban.state, ban.offline, ban.evidence) == (
        7, BanState.ACTIVE, True, {"hits": 3, "ports": [2, 1]},
    )  # fmt: skip
    with pytest.raises(TypeError):
        ban.evidence["hits"] = 4  # type: ignore[index]  # a record's evidence is read-only
    action = action_from_row((7, "nftables", '{"set":"v6"}', "undo_failed", 3, "boom", T0))
    assert len(ACTION_COLS.split(", ")) == 7
    assert (action.state, action.detail, action.attempts) == (
        ActionState.UNDO_FAILED, {"set": "v6"}, 3,
    )  # fmt: skip


def test_to_json_is_compact_and_sorted() -> None:
    text = to_json({"b": 1, "a": [1, 2]})
    assert text == '{"a":[1,2],"b":1}'
    assert json.loads(text) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(
    ("address", "prefix", "target"),
    [
        ("198.18.0.7", 32, "198.18.0.7"),
        ("198.18.0.0", 24, "198.18.0.0/24"),
        ("2001:db8::5", 128, "2001:db8::5"),
        ("2001:db8::", 64, "2001:db8::/64"),
    ],
)
def test_a_ban_targets_a_host_or_its_prefix(address: str, prefix: int, target: str) -> None:
    ban = BanRecord(
        1, address, prefix, T0, None, BanState.PENDING, "scan", None, {}, 1, None, None, False
    )
    assert ban.target == target


@pytest.mark.parametrize(
    ("state", "live"),
    [(BanState.PENDING, True), (BanState.ACTIVE, True), (BanState.LIFTED, False),
     (BanState.EXPIRED, False), (BanState.FAILED, False)],
)  # fmt: skip
def test_only_pending_and_active_bans_are_live(state: BanState, live: bool) -> None:
    ban = BanRecord(1, "198.18.0.7", 32, T0, None, state, "scan", None, {}, 1, None, None, False)
    assert ban.live is live


# --- rows no record can be made of: named, for the readers to skip ----------------------------

GOOD_BAN = (7, "198.18.0.7", 32, T0, T0 + 60, "active", "scan", None, "{}", 1, None, None, 0)


def _with(row: tuple[object, ...], **changes: object) -> tuple[object, ...]:
    names = BAN_COLS.split(", ")
    return tuple(changes.get(name, value) for name, value in zip(names, row, strict=True))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"evidence": "{broken"}, "evidence is not JSON (Expecting property name"),
        ({"evidence": "[1, 2]"}, "evidence is '[1, 2]', not a JSON object"),
        ({"evidence": None}, "evidence is NULL, not JSON text"),
        ({"state": "activ"}, "state 'activ' is not one of pending, active, lifted"),
        ({"created": None}, "created is NULL, not a time"),
        ({"expires": "tomorrow"}, "expires is 'tomorrow', not a time"),
        ({"address": "198.18.0.x"}, "address '198.18.0.x' is not an IP address"),
        ({"address": "198.18.0.7", "prefix": 24}, "has host bits set"),
        ({"address": "198.18.0.7", "prefix": 64}, "address 198.18.0.7 with prefix 64:"),
        ({"prefix": "wide"}, "prefix is 'wide', not a whole number"),
        ({"offence": 0}, "offence is 0, not at least 1"),
        ({"reason": None}, "reason is NULL, not text"),
        ({"offline": 2}, "offline is 2, not 0 or 1"),
    ],
)  # fmt: skip
def test_a_damaged_ban_row_names_its_table_row_and_fault(
    changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(DamagedRowError) as caught:
        ban_from_row(_with(GOOD_BAN, **changes))
    damaged = caught.value
    assert (damaged.table, damaged.row_id, damaged.key) == ("bans", 7, ("bans", 7))
    assert problem in damaged.problem
    assert str(damaged).startswith("bans row 7")
    assert damaged.live == (changes.get("state", "active") == "active")
    assert ban_from_row(GOOD_BAN).state is BanState.ACTIVE  # the same row, undamaged


def test_an_ipv6_ban_row_is_checked_too() -> None:
    row = _with(GOOD_BAN, address="2001:db8::", prefix=64)
    assert ban_from_row(row).target == "2001:db8::/64"
    with pytest.raises(DamagedRowError, match="has host bits set"):
        ban_from_row(_with(row, address="2001:db8::5"))
    assert ban_from_row(_with(row, address="2001:db8::5", prefix=128)).target == "2001:db8::5"
    with pytest.raises(DamagedRowError, match="'2001:db8::zz' is not an IP address"):
        ban_from_row(_with(row, address="2001:db8::zz", prefix=128))


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ((7, "run_cmd", "nope", "applied", 1, None, T0), "detail is not JSON"),
        ((7, "run_cmd", "{}", "maybe", 1, None, T0), "state 'maybe' is not one of applied"),
        ((7, None, "{}", "applied", 1, None, T0), "backend is NULL, not a name"),
        ((7, "run_cmd", "{}", "applied", "x", None, T0), "attempts is 'x', not a whole number"),
        ((7, "run_cmd", "{}", "applied", 1, 5, T0), "last_error is 5, not text"),
        ((7, "run_cmd", "{}", "applied", 1, None, None), "updated is NULL, not a time"),
    ],
)  # fmt: skip
def test_a_damaged_action_row_names_its_row_and_ban(row: tuple[object, ...], problem: str) -> None:
    with pytest.raises(DamagedRowError) as caught:
        action_from_row(row, row_id=12)
    assert str(caught.value).startswith(f"ban_actions row 12 (ban 7, {row[1]}): ")
    assert problem in caught.value.problem
    assert not caught.value.live


def test_an_uncertain_action_is_a_state_of_its_own() -> None:
    action = action_from_row((7, "run_cmd", "{}", "uncertain", 1, "may have run", T0))
    assert action.state is ActionState.UNCERTAIN


def test_to_json_writes_what_json_dumps_writes() -> None:
    documents: list[Mapping[str, Any]] = [
        {},
        {"z": None, "a": True, "m": [1, 2.5, -0.0, 1e300], "k": {"y": "x", "b": []}},
        {"name": 'höst "quoted"\n', "port": 65535, "ratio": 1 / 3},
        MappingProxyType({"plan": ["nftables", "hosts_deny"], "timeout": None}),
    ]
    for document in documents:
        expected = json.dumps(dict(document), separators=(",", ":"), sort_keys=True)
        assert to_json(document) == expected
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        to_json({"ports": {1, 2}})
