"""Scales of the report's charts: buckets, axis steps, ticks and labels."""

from __future__ import annotations

import pytest

from portsentinel.report.scale import (
    DAY,
    HOUR,
    MINUTE,
    NICE_STEPS,
    bucket_edges,
    bucket_index,
    bucket_step,
    count_text,
    count_ticks,
    duration_words,
    nice_axis,
    snap_step,
    time_label,
    time_ticks,
)

T0 = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC


@pytest.mark.parametrize(
    ("span", "step"),
    [
        (24 * HOUR, 30 * MINUTE),
        (HOUR, MINUTE),
        (7 * DAY, 3 * HOUR),
        (7.02, 0.2),
        (0.0, 0.01),
        (30 * DAY, DAY),
    ],
)
def test_bucket_step_is_the_smallest_nice_width_that_fits(span: float, step: float) -> None:
    assert bucket_step(T0, T0 + span, 60) == step


def test_an_unaligned_window_may_need_the_next_width() -> None:
    assert bucket_step(T0, T0 + HOUR, 60) == MINUTE  # 60 buckets exactly
    assert bucket_step(T0 + 1, T0 + HOUR + 1, 60) == 2 * MINUTE  # would take 61


def test_bucket_step_of_an_enormous_span_is_the_largest() -> None:
    assert bucket_step(0, 1e12, 60) == NICE_STEPS[-1]


@pytest.mark.parametrize("span", [0.3, 7.0, 59.0, 3 * HOUR + 7, DAY, 9 * DAY])
def test_edges_are_snapped_cover_the_window_and_stay_few(span: float) -> None:
    start = T0 + 123.456
    edges = bucket_edges(start, start + span, 60)
    step = snap_step(edges[1] - edges[0])
    assert edges[0] <= start
    assert edges[-1] >= start + span
    assert len(edges) - 1 <= 60
    assert abs(edges[0] / step - round(edges[0] / step)) < 1e-6  # on a multiple of the step


def test_bucket_index_clamps_outside_the_edges() -> None:
    edges = (0.0, 10.0, 20.0, 30.0)
    assert [bucket_index(edges, t) for t in (-5, 0, 9.99, 10, 29, 30, 99)] == [0, 0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("peak", "top", "step"),
    [(0, 1, 1), (3, 3, 1), (124, 150, 50), (777, 800, 200), (81, 100, 25), (10, 10, 2.5)],
)
def test_nice_axis(peak: float, top: float, step: float) -> None:
    got_top, got_step = nice_axis(peak)
    assert (got_top, got_step) == (top, max(step, 1.0))
    assert got_top >= peak
    assert count_ticks(got_top, got_step)[-1] == got_top


def test_time_ticks_land_on_round_periods() -> None:
    day = bucket_edges(T0, T0 + DAY, 60)  # 30-minute buckets
    ticks = time_ticks(day)
    assert 4 <= len(ticks) <= 10
    assert all(t % (3 * HOUR) == 0 for t in ticks)
    short = bucket_edges(T0 + 4.29, T0 + 11.31, 60)  # a capture: 0.2 s buckets
    ticks = time_ticks(short)
    assert [time_label(t, 0.2, 7.0)[-4:] for t in ticks] == [
        "05.0", "06.0", "07.0", "08.0", "09.0", "10.0", "11.0",
    ]  # fmt: skip


def test_snap_step_undoes_float_error_of_large_epochs() -> None:
    edges = bucket_edges(T0 + 0.1, T0 + 5, 60)
    assert edges[1] - edges[0] != 0.1  # float error of i * 0.1 near 1.7e9
    assert snap_step(edges[1] - edges[0]) == 0.1


@pytest.mark.parametrize(
    ("step", "span", "text"),
    [
        (30 * MINUTE, DAY, "16:00"),
        (30 * MINUTE, 2 * DAY, "11-24 16:00"),
        (DAY, 30 * DAY, "11-24"),
        (DAY, 400 * DAY, "2025-11-24"),
        (5.0, 60.0, "16:00:00"),
        (0.2, 7.0, "16:00:00.0"),
        (0.01, 0.3, "16:00:00.00"),
    ],
)
def test_time_labels_fit_the_bucket_width(step: float, span: float, text: str) -> None:
    assert time_label(T0, step, span) == text


def test_words_for_durations_and_counts() -> None:
    assert duration_words(7.02) == "7.02 s"
    assert duration_words(HOUR) == "1 h"
    assert duration_words(DAY + 2 * HOUR + 5) == "1 d 2 h"
    assert duration_words(DAY + 30) == "1 d"
    assert duration_words(25 * MINUTE) == "25 min"
    assert count_text(12345) == "12,345"
    assert count_text(2.5) == "2.5"
