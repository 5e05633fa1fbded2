"""The fleet end to end (issue 12): Debian's crowdsec LAPI in one namespace, PortSentinel on hosts
A and B, crowdsec-firewall-bouncer alone on host C (``fleetlab.py``).

The first scenario, in order, with generous deadlines: a scan banned on A reaches B's fleet set
(and B drops the scanner's packets) and C's bouncer set; a decision forged on B's own address is
refused on B; ``unblock`` on A lifts it everywhere; with LAPI stopped for ``OUTAGE`` seconds (60,
as the issue asks) a ban waits in A's outbox and reaches B once LAPI is back, once.

The second: a sweep of one port across three PortSentinel hosts (A, B, D), none of which bans on
one port (``BLOCK_MIN_PORTS=2``), is banned on all of them and on C, as one SWEEP decision.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import banlab
import fleetlab
import netns
import pytest
from daemon import PORTSENTINEL, Daemon

from portsentinel.config import load_config
from portsentinel.store.sqlite import Store

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(fleetlab.unavailable() is not None, reason=fleetlab.unavailable() or ""),
]

DEADLINE = 30.0
OUTAGE = float(os.environ.get("PORTSENTINEL_FLEET_OUTAGE", "60"))


def _settings(url: str, creds: Path, key: Path) -> dict[str, str]:
    return {
        "CROWDSEC_LAPI_URL": url,
        "CROWDSEC_CREDENTIALS_FILE": str(creds),
        "CROWDSEC_BOUNCER_KEY_FILE": str(key),
        "CROWDSEC_POLL_INTERVAL": "1s",
        "FLEET_PUSH_DELAY": "3s",
    }


@pytest.fixture(params=[False], ids=["A-B-C"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[fleetlab.Fleet]:
    with netns.Lab.create() as lab:
        f = fleetlab.Fleet(lab, tmp_path)
        try:
            f.build(third=request.param)
            f.start_lapi()
            yield f
        finally:
            f.close()


def _cli(fleet: fleetlab.Fleet, ns: str, d: Path, *args: str) -> str:
    argv = [*PORTSENTINEL, *args, "--state-dir", str(d)]
    if args[0] in ("unblock", "block", "allow", "why"):
        argv += ["--config", str(d / "portsentinel.conf")]
    done = fleet.lab.run(ns, ["timeout", "30", *argv], check=False, timeout=40)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


_REACH = (
    "import socket,sys\n"
    "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
    "except ConnectionRefusedError:\n sys.exit(0)\n"
    "except OSError:\n sys.exit(1)\n"
)


def _ping(fleet: fleetlab.Fleet, target: str, port: int = 40000) -> bool:
    """Does ``target`` answer the attacker (a RST from a closed port; by default one above
    the watched ones)?"""
    done = fleet.lab.run(fleet.lab.scanner, ["python3", "-c", _REACH, target, str(port)],
                         check=False)  # fmt: skip
    return done.returncode == 0


def _decisions(d: Path, address: str) -> list[str]:
    with Store.open(str(d)) as store:
        return [x.state for x in store.fleet_decisions(address=address)]


def _outbox(d: Path) -> int:
    with Store.open(str(d)) as store:
        return sum(store.outbox_depth().values())


def test_one_ban_everywhere(fleet: fleetlab.Fleet, tmp_path: Path) -> None:
    lab = fleet.lab
    a_creds, a_key = fleet.enroll("a", "http://198.19.1.1:8080")
    b_creds, b_key = fleet.enroll("b", "http://198.19.2.1:8080")
    fleet.start_bouncer()
    a = Daemon.start(lab, tmp_path / "a", mode="atcp",
                     settings=_settings("http://198.19.1.1:8080", a_creds, a_key))  # fmt: skip
    b = Daemon.start(lab, tmp_path / "b", mode="atcp", ns=fleet.b_ns,
                     settings=_settings("http://198.19.2.1:8080", b_creds, b_key))  # fmt: skip
    try:
        assert _ping(fleet, fleetlab.B_ADDRESS), "the attacker reaches B before any ban"
        banlab.wait_until(lambda: "fleet: LAPI" in a.stderr(), "A's fleet link started")

        # A scan of A: banned there, then (after FLEET_PUSH_DELAY) on B and C.
        scan = banlab.start_scan(lab, fleetlab.ATTACKER, "1-20")
        banlab.wait_until(lambda: fleetlab.ATTACKER in (banlab.nft_elements(lab) or {}),
                          "the local ban on A")  # fmt: skip
        banned = time.monotonic()
        banlab.wait_until(lambda: fleetlab.ATTACKER in fleetlab.fleet_set(lab, fleet.b_ns),
                          "the fleet ban in B's fleet4", DEADLINE)  # fmt: skip
        banlab.wait_until(lambda: fleetlab.ATTACKER in fleetlab.bouncer_set(lab, fleet.c_ns),
                          "the fleet ban in C's crowdsec set", DEADLINE)  # fmt: skip
        took = time.monotonic() - banned
        copies = fleetlab.nft_set(lab, fleet.b_ns, "netdev", "portsentinel", "fleet4")
        assert copies is not None, "B's ingress table has the fleet's copies"
        assert fleetlab.ATTACKER in copies, "and the ban drops at ingress there too"
        assert took >= 2.0, "a scan without a handshake waits for the decoy window"
        banlab.finish(scan)
        assert not _ping(fleet, fleetlab.B_ADDRESS), "B drops the scanner"
        listed = [json.loads(x) for x in _cli(fleet, fleet.b_ns, b.directory, "list", "--json")
                  .splitlines()]  # fmt: skip
        assert any(r["address"] == fleetlab.ATTACKER and r["origin"] == "portsentinel"
                   for r in listed), listed  # fmt: skip
        why = _cli(fleet, fleet.b_ns, b.directory, "why", fleetlab.ATTACKER)
        assert "reported  by a-portsentinel" in why, why
        assert "(ban)" in why, why
        status = _cli(fleet, lab.target, a.directory, "status")
        assert "fleet: LAPI http://198.19.1.1:8080 connected" in status, status

        # A decision forged on B's own address: refused on B, never in its set.
        fleet.cscli("decisions", "add", "--ip", "198.19.2.2", "--duration", "10m")
        banlab.wait_until(lambda: _decisions(b.directory, "198.19.2.2") == ["refused"],
                          "B refuses a fleet ban of its own address", DEADLINE)  # fmt: skip
        assert "198.19.2.2" not in fleetlab.fleet_set(lab, fleet.b_ns)
        why = _cli(fleet, fleet.b_ns, b.directory, "why", "198.19.2.2")
        assert "refused" in why, why

        # unblock on A: gone everywhere.
        out = _cli(fleet, lab.target, a.directory, "unblock", fleetlab.ATTACKER)
        assert "deleted in LAPI" in out, out
        banlab.wait_until(lambda: fleetlab.ATTACKER not in fleetlab.fleet_set(lab, fleet.b_ns),
                          "the unblock reaches B", DEADLINE)  # fmt: skip
        banlab.wait_until(
            lambda: fleetlab.ATTACKER not in fleetlab.bouncer_set(lab, fleet.c_ns),
            "the unblock reaches C", DEADLINE,
        )  # fmt: skip
        assert _ping(fleet, fleetlab.B_ADDRESS), "B lets the address in again"

        # LAPI down: an operator's ban waits in A's outbox, and goes out when LAPI is back.
        fleet.stop_lapi()
        _cli(fleet, lab.target, a.directory, "block", "198.18.0.9", "--for", "1h")
        banlab.wait_until(lambda: _outbox(a.directory) >= 1, "the ban waits in the outbox")
        time.sleep(OUTAGE)  # the outage itself: nothing must be lost while it lasts
        assert _outbox(a.directory) == 1, "kept, once, through the outage"
        fleet.start_lapi()
        banlab.wait_until(lambda: "198.18.0.9" in fleetlab.fleet_set(lab, fleet.b_ns),
                          "the ban reaches B after the outage", DEADLINE + 300)  # fmt: skip
        banlab.wait_until(lambda: _outbox(a.directory) == 0, "the outbox drained")
        alerts = json.loads(fleet.cscli("decisions", "list", "-a", "-o", "json") or "[]")
        found = [d for a in alerts for d in a.get("decisions") or [] if d["value"] == "198.18.0.9"]
        assert len(found) == 1, f"one decision, no duplicate: {found}"
    finally:
        for d in (b, a):
            code, _err = d.stop()
            assert code == 0, d.stderr()


ENROLL = Path(__file__).resolve().parents[2] / "packaging" / "portsentinel-fleet-enroll"


def _enroll_and_join(fleet: fleetlab.Fleet, ns: str, d: Path, lapi: str) -> tuple[Path, Path]:
    """packaging/portsentinel-fleet-enroll on the LAPI host, ``fleet join`` on the host: the
    credential files the configuration then names."""
    d.mkdir()
    enrolment = d / "d.fleet"
    argv = [str(ENROLL), "-c", str(fleet.files["config"]), "-o", str(enrolment), "d",
            f"http://{lapi}:8080"]  # fmt: skip
    done = fleet.lab.run(fleet.lapi_ns, argv, check=False)
    assert done.returncode == 0, done.stderr
    assert oct(enrolment.stat().st_mode & 0o777) == "0o600"
    conf = d / "joined.conf"
    out = fleet.lab.run(ns, [*PORTSENTINEL, "fleet", "join", str(enrolment), "--config", str(conf),
                             "--dir", str(d)], check=False)  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "accepts the machine d-portsentinel and the bouncer key" in out.stdout, out.stdout
    settings = load_config(str(conf)).settings
    assert settings.crowdsec_lapi_url == f"http://{lapi}:8080"
    return Path(settings.crowdsec_credentials_file), Path(settings.crowdsec_bouncer_key_file)


def _said(d: Daemon, text: str) -> bool:
    return text in d.stderr()


def _weak(d: Daemon) -> bool:
    return any(e.get("reason") == "too few ports for a block" for e in d.events())


def _in_fleet(lab: netns.Lab, ns: str) -> bool:
    return fleetlab.ATTACKER in fleetlab.fleet_set(lab, ns)


@pytest.mark.parametrize("fleet", [True], indirect=True, ids=["A-B-C-D"])
def test_sweep_across_three_hosts(fleet: fleetlab.Fleet, tmp_path: Path) -> None:
    lab = fleet.lab
    hosts = {"a": (lab.target, "198.19.1.1", netns.Lab.TARGET4),
             "b": (fleet.b_ns, "198.19.2.1", fleetlab.B_ADDRESS),
             "d": (fleet.d_ns, "198.19.4.1", fleetlab.D_ADDRESS)}  # fmt: skip
    fleet.start_bouncer()
    daemons: dict[str, Daemon] = {}
    try:
        for name, (ns, lapi, _address) in hosts.items():
            if name == "d":  # the two-command set-up, with the real cscli
                creds, key = _enroll_and_join(fleet, ns, tmp_path / name, lapi)
            else:
                creds, key = fleet.enroll(name, f"http://{lapi}:8080")
            settings = {**_settings(f"http://{lapi}:8080", creds, key), "BLOCK_MIN_PORTS": "2"}
            daemons[name] = Daemon.start(lab, tmp_path / name, mode="atcp", ns=ns,
                                         settings=settings)  # fmt: skip
        for d in daemons.values():
            banlab.wait_until(partial(_said, d, "fleet: LAPI"), "the fleet link started")

        # One port on each host: below every host's own threshold.
        for name, (_ns, _lapi, address) in hosts.items():
            assert _ping(fleet, address, 23), f"{name} answers the first probe"
            banlab.wait_until(partial(_weak, daemons[name]),
                              f"{name} saw the probe and did not ban", DEADLINE)  # fmt: skip
        for name, (ns, _lapi, _address) in hosts.items():
            banlab.wait_until(partial(_in_fleet, lab, ns), f"the sweep ban in {name}'s fleet4",
                              DEADLINE)  # fmt: skip
        banlab.wait_until(lambda: fleetlab.ATTACKER in fleetlab.bouncer_set(lab, fleet.c_ns),
                          "the sweep ban in C's crowdsec set", DEADLINE)  # fmt: skip
        for name, (ns, _lapi, _address) in hosts.items():
            local = fleetlab.nft_set(lab, ns, "inet", "portsentinel", "ban4")
            assert not local, f"{name} did not ban it on its own: {local}"
        for name, (_ns, _lapi, address) in hosts.items():
            assert not _ping(fleet, address, 24), f"{name} drops the sweeper"

        found = json.loads(fleet.cscli("alerts", "list", "-a", "-o", "json") or "[]")
        sweeps = [a for a in found if a.get("scenario") == "portsentinel/sweep"]
        assert len(sweeps) == 1, f"one SWEEP decision: {sweeps}"
        message = sweeps[0]["message"]
        assert "across 3 hosts" in message, message
        for name in hosts:
            assert f"{name}-portsentinel: tcp/23" in message, message
        why = _cli(fleet, fleet.b_ns, daemons["b"].directory, "why", fleetlab.ATTACKER)
        assert "portsentinel/sweep" in why, why
        for name in hosts:
            assert f"by {name}-portsentinel at" in why, why
    finally:
        for d in daemons.values():
            code, _err = d.stop()
            assert code == 0, d.stderr()
