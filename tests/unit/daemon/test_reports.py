"""``daemon.reports``: what a running pipeline reports (status, counters, metrics), on fakes."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from portsentinel.capture.nflog import NflogReader
from portsentinel.daemon.unsolicited import UnsolicitedSource
from unit.daemon.fakes import WALL, Driver, Parts, attach, build, setup, syn
from unit.decode_frames import TCP, ipv6, tcp


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    return build(setup(tmp_path))


def test_status_metrics_and_statistics(tmp_path: Path, parts: Parts) -> None:
    responder = attach(parts, tmp_path / "state")
    responder.bans_active, responder.bans_added, responder.rows_dropped = 1, 3, 5
    assert parts.ring is not None
    ring = parts.ring
    Driver(parts).run([lambda: ring.send(syn(1), syn(2), ipv6(TCP, tcp(dport=3)))])
    status = parts.pipeline.status(started=WALL)
    assert status["started"] == WALL
    assert status["modes"] == ["atcp"]
    assert status["config"] == parts.pipeline.setup.config.path
    assert status["ports_in_use"] == {"tcp": 0, "udp": 0}
    assert status["responses"] is True
    watched = status["ports_watched"]
    assert isinstance(watched, dict)
    assert watched["atcp"] > 1000  # every port below ADVANCED_PORTS_TCP
    stats = parts.pipeline.statistics()
    assert status["counters"] == stats
    assert (stats["packets"], stats["probes_syn"], stats["decisions_block"]) == (3, 2, 1)
    assert stats["not_local"] == 1  # the IPv6 SYN reached no address of this host
    assert (stats["kernel_packets"], stats["kernel_drops"], stats["ring_handled"]) == (5, 2, 3)
    assert stats["records_dropped"] == 5
    metrics = parts.pipeline.metrics_snapshot()
    assert metrics["bans_active"] == 1
    assert metrics["bans_added"] == 3
    assert metrics["backends"] == {"nftables": True}
    assert "bans_refused" in metrics
    assert "notifications" not in metrics


class Group:
    received, overflows = 7, 1

    def close(self) -> None: ...


def test_the_ingress_drops_and_the_unsolicited_segments_are_counted(
    tmp_path: Path, parts: Parts
) -> None:
    responder = attach(parts, tmp_path / "state")
    stats = parts.pipeline.statistics()
    assert "ingress_dropped_packets" not in stats  # not read yet (or no nftables backend)
    assert "unsolicited_packets" not in stats
    responder.ingress_drops = (2000, 88000)
    detector = parts.pipeline.detector
    parts.pipeline.unsolicited = UnsolicitedSource(
        cast(NflogReader, Group()), detector, parts.pipeline.outputs.emit, lambda: 0.0,
        lambda _pkt: False,
    )  # fmt: skip
    stats = parts.pipeline.statistics()
    assert (stats["ingress_dropped_packets"], stats["ingress_dropped_bytes"]) == (2000, 88000)
    assert (stats["unsolicited_packets"], stats["unsolicited_overflows"]) == (7, 1)
    assert parts.pipeline.status(started=WALL)["counters"] == stats
