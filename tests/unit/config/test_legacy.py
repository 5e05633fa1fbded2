"""PortSentry 1.2's own reading of its files: ``migrate`` keeps what each line meant to 1.2."""

from __future__ import annotations

import pytest

from portsentinel.config.legacy import (
    NOTE,
    atoi,
    effective_value,
    migrate_config,
    migrate_ignore,
    portsentry_value,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('SCAN_TRIGGER="2"', ("SCAN_TRIGGER", "2")),
        ('SCAN_TRIGGER = "2" # comment', ("SCAN_TRIGGER", "2")),
        ("SCAN_TRIGGER=2", ("SCAN_TRIGGER", None)),  # 1.2 skips a line without quotes
        ('PORT_BANNER="open', ("PORT_BANNER", "open")),  # no closing quote: to the end
        ('PORT_BANNER="a\x01b"', ("PORT_BANNER", "a")),  # stops at the first control char
        ('# SCAN_TRIGGER="2"', None),
        ('  SCAN_TRIGGER="2"', None),  # 1.2 reads a key only at column 0
        ("", None),
    ],
)
def test_portsentry_value_reads_a_line_as_12_did(
    line: str, expected: tuple[str, str | None] | None
) -> None:
    assert portsentry_value(line) == expected


@pytest.mark.parametrize(
    ("text", "number"),
    [("42", 42), ("  -7x", -7), ("+3", 3), ("abc", 0), ("", 0), ("-", 0), ("12 34", 12)],
)
def test_atoi_reads_numbers_as_c_does(text: str, number: int) -> None:
    assert atoi(text) == number


@pytest.mark.parametrize(
    ("key", "raw", "used"),
    [
        ("BLOCK_TCP", "2x", "2"),
        ("BLOCK_UDP", "7", "0"),  # 1.2 treats a level outside 0-2 as 0
        ("RESOLVE_HOST", "yes", "0"),
        ("RESOLVE_HOST", "1.0", "1"),
        ("KILL_RUN_CMD_FIRST", "5", "1"),
        ("SCAN_TRIGGER", "3 hits", "3"),
        ("SCAN_TRIGGER", "99999", None),  # no faithful equivalent: out of range here
        ("ADVANCED_PORTS_TCP", "0", None),
        ("TCP_PORTS", "1,2,x", None),  # not a number setting: the admin decides
    ],
)
def test_effective_value_is_what_12_made_of_it(key: str, raw: str, used: str | None) -> None:
    assert effective_value(key, raw) == used


def test_migrate_config_keeps_good_lines_and_comments_as_written() -> None:
    text = '# my scanner box\nSCAN_TRIGGER="2"\n\nTCP_PORTS="1,2,3"  # few\n\n\n'
    result = migrate_config(text, "portsentry.conf", None)
    assert result.config == ["# my scanner box", 'SCAN_TRIGGER="2"', "", 'TCP_PORTS="1,2,3"  # few']
    assert result.carried == ["SCAN_TRIGGER", "TCP_PORTS"]
    assert result.changed == []
    assert result.values == {"SCAN_TRIGGER": "2", "TCP_PORTS": "1,2,3"}
    assert result.seen == {"SCAN_TRIGGER": 2, "TCP_PORTS": 4}


def test_lines_12_did_not_use_are_commented_out_with_the_reason() -> None:
    text = '  SCAN_TRIGGER="5"\nNO_SUCH_KEY="1"\nBLOCK_TCP=1\nSCAN_TRIGGER="1"\nSCAN_TRIGGER="4"'
    result = migrate_config(text, "p.conf", None)
    assert result.config == [
        f"{NOTE} PortSentry ignored this indented line, so it stays off",
        '#  SCAN_TRIGGER="5"',
        f"{NOTE} neither PortSentry nor PortSentinel knows this key",
        '#NO_SUCH_KEY="1"',
        f"{NOTE} PortSentry skipped this line (quotes missing)",
        "#BLOCK_TCP=1",
        'SCAN_TRIGGER="1"',
        f"{NOTE} PortSentry used SCAN_TRIGGER from line 4; this one stays off",
        '#SCAN_TRIGGER="4"',
    ]
    assert result.changed == [
        "SCAN_TRIGGER on line 1: commented out (indented)",
        "NO_SUCH_KEY on line 2: commented out (unknown key)",
        "BLOCK_TCP on line 3: commented out (no quotes)",
        "SCAN_TRIGGER on line 5: commented out (line 4 wins)",
    ]
    assert result.values == {"SCAN_TRIGGER": "1"}


def test_a_repeated_portsentinel_key_keeps_the_last_as_portsentinel_reads_it() -> None:
    result = migrate_config('BAN_DURATION="1h"\nBAN_DURATION="2h"', "p.conf", None)
    assert result.config == ['BAN_DURATION="1h"', 'BAN_DURATION="2h"']
    assert result.values == {"BAN_DURATION": "2h"}


def test_values_12_read_differently_are_rewritten_or_left_for_review() -> None:
    result = migrate_config('BLOCK_TCP="9"\nSCAN_TRIGGER="lots"\nTCP_PORTS="x"', "p.conf", None)
    assert result.config == [
        f'{NOTE} PortSentry read "9" as 0',
        'BLOCK_TCP="0"',
        f'{NOTE} PortSentry read "lots" as 0',
        'SCAN_TRIGGER="0"',
        f'{NOTE} REVIEW: "x" is not a valid TCP_PORTS',
        '#TCP_PORTS="x"',
    ]
    assert result.values == {"BLOCK_TCP": "0", "SCAN_TRIGGER": "0"}
    assert result.changed[-1] == (
        'TCP_PORTS on line 3: "x" is not valid; commented out, REVIEW IT (p.conf:3)'
    )


def test_an_empty_value_is_kept_only_where_it_means_none() -> None:
    result = migrate_config('KILL_RUN_CMD=""\nBLOCK_UDP=""', "p.conf", None)
    assert result.config[0] == 'KILL_RUN_CMD=""'
    assert result.config[1:] == [f'{NOTE} PortSentry read "" as 0', 'BLOCK_UDP="0"']


def test_ignore_file_and_kill_route_are_replaced() -> None:
    text = 'IGNORE_FILE="/etc/portsentry/portsentry.ignore"\nKILL_ROUTE="/sbin/route add $TARGET$"'
    result = migrate_config(text, "p.conf", "/new/ignore")
    assert result.config == [
        f'{NOTE} was "/etc/portsentry/portsentry.ignore"; a merged copy of PortSentry\'s '
        "ignore files",
        'IGNORE_FILE="/new/ignore"',
        f"{NOTE} nftables (BLOCK_BACKEND below) replaces this; to run it as",
        f'{NOTE} PortSentry did, set BLOCK_BACKEND="legacy" and remove the # below.',
        '#KILL_ROUTE="/sbin/route add $TARGET$"',
    ]
    assert result.values == {"IGNORE_FILE": "/new/ignore"}
    assert result.changed[0] == "IGNORE_FILE: /etc/portsentry/portsentry.ignore -> /new/ignore"
    assert result.changed[1].startswith('KILL_ROUTE "/sbin/route add $TARGET$" is replaced')


def test_ignore_file_is_left_alone_without_a_target() -> None:
    result = migrate_config('IGNORE_FILE="/etc/portsentry/portsentry.ignore"', "p.conf", None)
    assert result.config == ['IGNORE_FILE="/etc/portsentry/portsentry.ignore"']
    assert result.carried == ["IGNORE_FILE"]


def test_migrate_ignore_merges_in_order_without_duplicates() -> None:
    text, count, notes = migrate_ignore(
        [
            ("a.ignore", "127.0.0.1\n# a comment\n\n198.18.0.0/24  # lab\n"),
            ("b.ignore", "127.0.0.1\n2001:db8::1\n"),
        ]
    )
    assert count == 3
    assert notes == []
    body = text.split("\n")
    assert body[0].startswith("# PortSentinel ignore file")
    assert body[3:] == [
        "", "# from a.ignore", "127.0.0.1", "198.18.0.0/24",
        "", "# from b.ignore", "2001:db8::1", "",
    ]  # fmt: skip


def test_migrate_ignore_keeps_12s_readings_and_says_so() -> None:
    text, count, notes = migrate_ignore([("x.ignore", "10.0.0.1/0\n10.0.0.2junk\nnot-an-ip\n")])
    assert count == 2
    assert notes == [
        "x.ignore: 10.0.0.1/0 was read as 10.0.0.1/32 by PortSentry; kept so",
        "x.ignore: '10.0.0.2junk' read as 10.0.0.2, as PortSentry did",
        "x.ignore: 'not-an-ip' is not an address; left as a comment",
    ]
    assert text.endswith(
        "# from x.ignore\n"
        f"{NOTE} 10.0.0.1/0 was read as 10.0.0.1/32 by PortSentry; kept so\n10.0.0.1\n"
        f"{NOTE} '10.0.0.2junk' read as 10.0.0.2, as PortSentry did\n10.0.0.2\n"
        f"{NOTE} not an address (PortSentry could not use it either): not-an-ip\n"
    )
