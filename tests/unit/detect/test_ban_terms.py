"""The terms of a ban, from numbers alone: its length for a first and a repeat offence, and
when an IPv6 ban widens to its prefix."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from portsentinel.detect.ban_terms import BanTerms
from portsentinel.detect.budget import SHORT_BAN

HOUR = 3600.0
DAY = 86400.0
TERMS = BanTerms(
    duration=HOUR,
    repeat_factor=2.0,
    max_duration=7 * DAY,
    repeat_window=30 * DAY,
    prefix_after=3,
    prefix_len=64,
)


@pytest.mark.parametrize(
    ("earlier", "expected"),
    [(0, (HOUR, 1)), (1, (2 * HOUR, 2)), (2, (4 * HOUR, 3)), (7, (128 * HOUR, 8))],
)
def test_each_repeat_doubles_the_ban(earlier: int, expected: tuple[float, int]) -> None:
    assert TERMS.length(earlier) == expected


def test_repeats_stop_growing_at_the_cap() -> None:
    assert TERMS.length(8) == (7 * DAY, 9)  # 256 h would pass 7 days
    assert TERMS.length(40) == (7 * DAY, 41)


def test_a_cap_below_the_first_ban_never_shortens_it() -> None:
    terms = replace(TERMS, duration=DAY, max_duration=HOUR)
    assert terms.length(0) == (DAY, 1)
    assert terms.length(3) == (DAY, 4)


def test_without_a_cap_repeats_grow_unbounded() -> None:
    assert replace(TERMS, max_duration=None).length(10) == (1024 * HOUR, 11)


def test_permanent_bans_stay_permanent_and_still_count_the_offence() -> None:
    assert replace(TERMS, duration=None).length(0) == (None, 1)
    assert replace(TERMS, duration=None).length(4) == (None, 5)


def test_a_factor_of_one_keeps_every_ban_the_same_length() -> None:
    assert replace(TERMS, repeat_factor=1.0).length(5) == (HOUR, 6)


def test_repeat_window_counts_back_from_now() -> None:
    assert TERMS.repeat_since(100 * DAY) == 70 * DAY


def test_the_prefix_of_an_ipv6_address() -> None:
    assert TERMS.prefix_of("fd00:5e::a") == ipaddress.IPv6Network("fd00:5e::/64")
    assert replace(TERMS, prefix_len=48).prefix_of("fd00:5e:1:2::a") == ipaddress.IPv6Network(
        "fd00:5e:1::/48"
    )


def test_no_prefix_for_ipv4_or_when_widening_is_off() -> None:
    assert TERMS.prefix_of("198.18.0.2") is None
    assert replace(TERMS, prefix_after=0).prefix_of("fd00:5e::a") is None


@pytest.mark.parametrize(
    ("banned", "protected", "expected"),
    [
        (0, False, None),
        (1, False, None),
        (2, False, 64),  # the third address of the prefix: the whole prefix
        (9, False, 64),
        (2, True, None),  # a never-block address inside: never the prefix
        (9, True, None),
    ],
)
def test_widening_after_enough_addresses_of_one_prefix(
    banned: int, protected: bool, expected: int | None
) -> None:
    assert TERMS.widen(banned, protected=lambda: protected) == expected


def test_widening_after_one_address_widens_the_first_ban() -> None:
    assert replace(TERMS, prefix_after=1).widen(0, protected=lambda: False) == 64


def test_widening_off_never_widens() -> None:
    assert replace(TERMS, prefix_after=0).widen(100, protected=lambda: False) is None


def test_the_never_block_set_is_asked_only_once_the_count_is_reached() -> None:
    asked: list[bool] = []

    def protected() -> bool:
        asked.append(True)
        return False

    assert TERMS.widen(0, protected=protected) is None
    assert asked == []
    assert TERMS.widen(2, protected=protected) == 64
    assert asked == [True]


def test_a_provisional_ban_is_a_first_offences_length_at_most_short_ban() -> None:
    base = {"repeat_factor": 2.0, "max_duration": None, "repeat_window": 86400.0,
            "prefix_after": 0, "prefix_len": 64}  # fmt: skip
    assert BanTerms(duration=3600.0, **base).short() == SHORT_BAN  # type: ignore[arg-type]
    assert BanTerms(duration=60.0, **base).short() == 60.0  # type: ignore[arg-type]
    assert BanTerms(duration=None, **base).short() == SHORT_BAN  # type: ignore[arg-type]
