"""The Prometheus endpoint: served on 127.0.0.1 only, scraped with urllib, parsed with the
client library's own parser; every value follows the daemon's snapshot at scrape time."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from portsentinel.config.schema import Settings, spec_for
from portsentinel.config.types import InvalidValueError
from portsentinel.daemon.metrics import (
    DecisionCounts,
    MetricsServer,
    check_listen,
    refused_counts,
)
from portsentinel.errors import ConfigError
from portsentinel.model import Action, Decision, Proto, Reason, ScanKind

STARTED = 1_800_000_000.0


def snapshot_of(values: dict[str, object]) -> tuple[list[int], MetricsServer]:
    calls = [0]

    def snapshot() -> Mapping[str, object]:
        calls[0] += 1
        return dict(values)

    return calls, MetricsServer("127.0.0.1", 0, snapshot, started=STARTED, version="9.9.9")


@pytest.fixture
def state() -> dict[str, object]:
    return {
        "packets": 1000,
        "decode_errors": 2,
        "kernel_drops": 5,
        "reply_checks": 40,
        "tracked_sources": 12,
        "bans_active": 3,
        "bans_added": 4,
        "probes_syn": 30,
        "probes_udp": 7,
        "decisions_alert": 1,
        "decisions_block": 4,
        "decisions_ignored": 9,
        "alerts": {"block": {"SYN": 3, "FIN": 1}, "alert": {"UDP": 1}},
        "bans_refused": {"budget": 6, "never_block": 2},
        "backends": {"nftables": True, "hosts_deny": True},
        "notifications": {"webhook_sent": 5, "limited": 1},
        "text": "not a number",
    }


@pytest.fixture
def served(state: dict[str, object]) -> Iterator[tuple[list[int], MetricsServer]]:
    calls, server = snapshot_of(state)
    server.start()
    yield calls, server
    server.close()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    host, port = server.address
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples: list[Sample] = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def test_scrape_follows_the_snapshot(
    served: tuple[list[int], MetricsServer], state: dict[str, object]
) -> None:
    calls, server = served
    got = scrape(server)
    assert calls == [1]
    assert got[("portsentinel_packets_total", ())] == 1000
    assert got[("portsentinel_decode_errors_total", ())] == 2
    assert got[("portsentinel_kernel_drops_total", ())] == 5
    assert got[("portsentinel_reply_checks_total", ())] == 40
    assert got[("portsentinel_tracked_sources", ())] == 12
    assert got[("portsentinel_bans_active", ())] == 3
    assert got[("portsentinel_bans_added_total", ())] == 4
    assert got[("portsentinel_probes_total", (("kind", "SYN"),))] == 30
    assert got[("portsentinel_probes_total", (("kind", "UDP"),))] == 7
    assert got[("portsentinel_decisions_total", (("action", "block"),))] == 4
    assert got[("portsentinel_decisions_total", (("action", "ignored"),))] == 9
    assert got[("portsentinel_alerts_total", (("action", "block"), ("kind", "SYN")))] == 3
    assert got[("portsentinel_alerts_total", (("action", "alert"), ("kind", "UDP")))] == 1
    assert got[("portsentinel_bans_refused_total", (("reason", "budget"),))] == 6
    assert got[("portsentinel_bans_refused_total", (("reason", "never_block"),))] == 2
    assert got[("portsentinel_notifications_total", (("outcome", "webhook_sent"),))] == 5
    assert got[("portsentinel_backend_up", (("backend", "nftables"),))] == 1
    assert got[("portsentinel_degraded", ())] == 0
    assert got[("portsentinel_start_time_seconds", ())] == STARTED
    python = next(dict(k[1])["python"] for k in got if k[0] == "portsentinel_build_info")
    assert got[("portsentinel_build_info", (("python", python), ("version", "9.9.9")))] == 1
    assert ("process_cpu_seconds_total", ()) in got

    state["packets"] = 1500
    state["backends"] = {"nftables": True, "hosts_deny": False}
    again = scrape(server)
    assert calls == [2]  # one snapshot per scrape, nothing in between
    assert again[("portsentinel_packets_total", ())] == 1500
    assert again[("portsentinel_backend_up", (("backend", "hosts_deny"),))] == 0
    assert again[("portsentinel_degraded", ())] == 1


def test_missing_and_non_numeric_keys_are_not_exported(
    served: tuple[list[int], MetricsServer],
) -> None:
    names = {name for name, _labels in scrape(served[1])}
    assert "portsentinel_kernel_packets_total" not in names  # no capture ring in the snapshot
    assert "portsentinel_connects_total" not in names
    assert not any("text" in name for name in names)
    assert ("portsentinel_probes_total", (("kind", "FIN"),)) not in scrape(served[1])


def test_an_explicit_degraded_flag_wins_and_start_time_may_come_from_the_snapshot() -> None:
    _calls, server = snapshot_of({"degraded": True, "start_time": 1234.5})
    server.start()
    try:
        got = scrape(server)
    finally:
        server.close()
    assert got[("portsentinel_degraded", ())] == 1
    assert got[("portsentinel_start_time_seconds", ())] == 1234.5


def test_the_endpoint_stops_listening_on_close() -> None:
    _calls, server = snapshot_of({})
    server.start()
    host, port = server.address
    server.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=2):
        pass


def test_a_serving_thread_that_ended_unasked_is_not_alive() -> None:
    """The daemon asks every tick (``Pipeline.watched``) and exits when it is not."""
    _calls, server = snapshot_of({})
    assert server.alive()  # not started: nothing died
    server.start()
    try:
        assert server.alive()
        assert server._server is not None
        server._server.shutdown()  # the serving loop ends, as if it had failed
        assert not server.alive()
    finally:
        server.close()
    assert server.alive()  # closed on purpose


def test_ipv6_loopback_is_served() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = MetricsServer("::1", 0, lambda: {"packets": 3})
    server.start()
    try:
        host, port = server.address
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://[{host}]:{port}/metrics", timeout=5) as answer:
            assert b"portsentinel_packets_total 3.0" in answer.read()
    finally:
        server.close()


# --- off by default, loopback only --------------------------------------------------------------


def test_off_by_default() -> None:
    assert Settings().metrics_listen is None
    assert MetricsServer.from_settings(Settings(), dict) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "198.18.0.1", "fd00::1"])
def test_non_loopback_addresses_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"METRICS_LISTEN: .* is not a loopback address"):
        MetricsServer(host, 9469, dict)
    settings = replace(Settings(), metrics_listen=(host, 9469))
    with pytest.raises(ConfigError):
        MetricsServer.from_settings(settings, dict)


def test_remote_addresses_only_with_metrics_allow_remote() -> None:
    check_listen("0.0.0.0", allow_remote=True)  # nothing is bound here
    for host in ("127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"):
        check_listen(host, allow_remote=False)


def test_from_settings_serves_on_the_configured_loopback_port() -> None:
    with socket.socket() as probe:  # a free port, released just before use
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(Settings(), metrics_listen=("127.0.0.1", port))
    server = MetricsServer.from_settings(settings, lambda: {"packets": 9})
    assert server is not None
    server.start()
    try:
        assert server.address == ("127.0.0.1", port)
        assert scrape(server)[("portsentinel_packets_total", ())] == 9
    finally:
        server.close()


def test_listen_setting_parses_its_addresses() -> None:
    spec = spec_for("METRICS_LISTEN")
    assert spec.parse("localhost:9469") == ("127.0.0.1", 9469)
    assert spec.parse("[::1]:9469") == ("::1", 9469)
    assert spec.parse("9469") == ("127.0.0.1", 9469)
    assert spec.parse("") is None
    assert spec.render(("::1", 9469)) == "[::1]:9469"
    for bad in ("metrics.example.org:9469", "127.0.0.1:0", "127.0.0.1:http", "[::1]"):
        with pytest.raises(InvalidValueError):
            spec.parse(bad)
    assert spec_for("METRICS_ALLOW_REMOTE").default_value is False  # a remote one: refused


# --- counts the daemon keeps for the snapshot ---------------------------------------------------


def decision(action: Action, reason: Reason, *, first: bool, kind: ScanKind) -> Decision:
    return Decision(
        time=1.0, src="198.18.0.2", dst="198.18.0.1", proto=Proto.TCP, port=1, kind=kind,
        action=action, reason=reason, first=first,
    )  # fmt: skip


def test_refusals_come_from_the_detectors_counts() -> None:
    ignored = dict.fromkeys(Reason, 0)
    ignored[Reason.BAN_BUDGET] = 7
    ignored[Reason.NEVER_BLOCK] = 3
    ignored[Reason.ALREADY_BLOCKED] = 99
    assert refused_counts(ignored) == {"budget": 7, "never_block": 3}


def test_decision_counts_by_response_kind() -> None:
    counts = DecisionCounts()
    before = counts.snapshot()
    counts.add(decision(Action.BLOCK, Reason.TRIGGERED, first=True, kind=ScanKind.SYN))
    counts.add(decision(Action.BLOCK, Reason.TRIGGERED, first=True, kind=ScanKind.SYN))
    counts.add(decision(Action.ALERT, Reason.TRIGGERED, first=True, kind=ScanKind.UDP))
    counts.add(decision(Action.BLOCK, Reason.ALREADY_BLOCKED, first=False, kind=ScanKind.SYN))
    counts.add(decision(Action.IGNORED, Reason.BAN_BUDGET, first=False, kind=ScanKind.SYN))
    counts.add(decision(Action.IGNORED, Reason.NEVER_BLOCK, first=False, kind=ScanKind.FIN))
    counts.add(decision(Action.IGNORED, Reason.IGNORE_LIST, first=False, kind=ScanKind.FIN))
    snap = counts.snapshot()
    alerts = snap["alerts"]
    assert isinstance(alerts, dict)
    assert alerts["block"]["SYN"] == 2
    assert alerts["alert"]["UDP"] == 1
    assert sum(n for kinds in alerts.values() for n in kinds.values()) == 3
    assert set(snap) == {"alerts"}
    # Filled up front: the tables a scrape reads never change size.
    before_alerts = before["alerts"]
    assert isinstance(before_alerts, dict)
    assert {a: set(k) for a, k in before_alerts.items()} == {a: set(k) for a, k in alerts.items()}
