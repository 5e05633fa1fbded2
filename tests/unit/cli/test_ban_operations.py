"""The ban verbs' work on a store: list reads it (as of a replay's end for a replay's
store), block, unblock and allow act on it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from portsentinel.cli import ban_operations
from portsentinel.errors import ConfigError
from portsentinel.store.sqlite import Store
from unit.cli.stores import T0


def test_list_uses_the_shared_table(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        ports = [f"tcp/{p}" for p in range(1, 11)]
        ban = store.begin_ban(
            "192.0.2.77", None, created=T0, expires=None, reason="manual block", rule=None,
            evidence={"ports": ports}, offence=1,
        )  # fmt: skip
        store.activate(ban.id)
    out = io.StringIO()
    assert ban_operations.list_bans(str(tmp_path), False, out) == 0
    assert out.getvalue() == (
        "ADDRESS     SINCE                UNTIL      REASON        PORTS SEEN\n"
        "192.0.2.77  2023-11-14T22:13:20  permanent  manual block  "
        "tcp/1, tcp/2, tcp/3, tcp/4, tcp/5, tcp/6, tcp/7, tcp/8 (+2)\n"
    )


def test_list_says_which_rows_it_skipped_as_damaged(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        for address in ("192.0.2.77", "192.0.2.78"):
            ban = store.begin_ban(address, None, created=T0, expires=None, reason="manual block",
                                  rule=None, evidence={}, offence=1)  # fmt: skip
            store.activate(ban.id)
        store._conn.execute("UPDATE bans SET evidence = 'x' WHERE address = '192.0.2.78'")
    out, err = io.StringIO(), io.StringIO()
    assert ban_operations.list_bans(str(tmp_path), True, out, err) == 0
    assert [line[:24] for line in out.getvalue().splitlines()] == ['{"address":"192.0.2.77",']
    assert err.getvalue().startswith(
        "portsentinel: warning: skipped a damaged row of the state store: bans row 2 "
        "(192.0.2.78): evidence is not JSON"
    )


def test_list_without_a_store_creates_none(tmp_path: Path) -> None:
    out = io.StringIO()
    assert ban_operations.list_bans(str(tmp_path / "none"), False, out) == 0
    assert out.getvalue() == "no active bans\n"
    out = io.StringIO()
    assert ban_operations.list_bans(str(tmp_path / "none"), True, out) == 0
    assert out.getvalue() == ""
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 2001:DB8::1 ", "2001:db8::1"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
    ],
)
def test_normalise_writes_an_address_one_way(text: str, expected: str) -> None:
    assert ban_operations.normalise(text) == expected


def test_normalise_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ConfigError, match="not an address"):
        ban_operations.normalise("192.0.2.0/24")


def test_parse_duration() -> None:
    assert ban_operations.parse_duration("15m") == 900.0
    assert ban_operations.parse_duration("permanent") is None
    with pytest.raises(ConfigError, match="--for"):
        ban_operations.parse_duration("soon")
