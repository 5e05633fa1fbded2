"""Reload (SIGHUP and ``portsentinel reload``): new ports and ignore list take effect under a
running daemon, its bans survive, and a broken configuration is refused while the old one
stays in force."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import add_scanner_address, banned, cli, nmap_scan, unavailable, wait_until
from daemon import Daemon, write_config

_REASON = netns.unavailable() or unavailable(("nmap", "nft"))
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

SCANNER, OTHER = "198.18.0.2", "198.18.0.3"


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psrl") as lab:
        add_scanner_address(lab, OTHER)
        yield lab


def events_from(daemon: Daemon, src: str) -> list[dict[str, object]]:
    return [e for e in daemon.events() if e.get("src") == src]


def test_reload_applies_new_ports_and_ignore_list_and_keeps_bans(
    lab: netns.Lab, tmp_path: Path
) -> None:
    ignore = tmp_path / "ignore"
    ignore.write_text("# nobody yet\n")
    settings = {"TCP_PORTS": "11,12", "IGNORE_FILE": str(ignore), "BLOCK_TCP": "1"}
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=settings)
    nmap_scan(lab, SCANNER, "11-14")
    wait_until(lambda: SCANNER in banned(lab, daemon) or None, "the first ban")
    # 11 and 12 only (13 and 14 are not watched yet); once banned, its next SYN is dropped at
    # ingress, before the capture, so the second port may never be seen
    first = {e["port"] for e in events_from(daemon, SCANNER)}
    assert first, first
    assert first <= {11, 12}, first

    # New ports, and OTHER on the ignore list; written the way an operator edits files.
    ignore.write_text(f"{OTHER}/32\n")
    write_config(tmp_path, {**settings, "TCP_PORTS": "13,14"})
    assert cli(lab, daemon, "reload").returncode == 0
    daemon.wait_for_line("configuration reloaded")

    nmap_scan(lab, OTHER, "11-14")
    seen = daemon.wait_for_events(
        lambda ev: len(events_from_list(ev, OTHER)) >= 2, "the ignored scanner's probes"
    )
    other = events_from_list(seen, OTHER)
    assert {e["port"] for e in other} == {13, 14}  # only the new ports are watched
    assert {e["reason"] for e in other} == {"ignore list"}
    assert SCANNER in banned(lab, daemon)  # the ban survived the reload
    assert OTHER not in banned(lab, daemon)
    code, _stderr = daemon.stop()
    assert code == 0


def events_from_list(events: list[dict[str, object]], src: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("src") == src]


def test_a_broken_configuration_is_refused_and_the_old_one_stays(
    lab: netns.Lab, tmp_path: Path
) -> None:
    settings = {"TCP_PORTS": "11,12", "BLOCK_TCP": "0"}
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=settings)
    config = tmp_path / "portsentinel.conf"
    config.write_text(config.read_text() + 'TCP_PORTS="13,x"\nBLOCK_TCP="9"\n')
    done = cli(lab, daemon, "reload")  # the verb hears the refusal: exit 2 with the errors
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"portsentinel: reload refused: {config}:")
    assert "the running configuration stays in force" in done.stderr
    daemon.wait_for_line("the running configuration stays in force")
    daemon.proc.send_signal(signal.SIGHUP)  # the signal's way: said in the log only
    wait_until(lambda: daemon.stderr().count("stays in force") == 2 or None, "the second refusal")
    stderr = daemon.stderr()
    assert f"reload refused: {config}:" in stderr
    assert "TCP_PORTS" in stderr
    assert "BLOCK_TCP" in stderr
    nmap_scan(lab, SCANNER, "11-14")
    seen = daemon.wait_for_events(lambda ev: len(ev) >= 2, "probes to the old ports")
    assert {e["port"] for e in seen} == {11, 12}  # the old ports still watched
    assert daemon.proc.poll() is None
    code, _stderr = daemon.stop()
    assert code == 0


@pytest.mark.parametrize(
    "broken",
    [
        'WEBHOOK_URL="http://[fd00::1/hook"',  # urlsplit: "Invalid IPv6 URL"
        'METRICS_LISTEN="127.0.0.1:9²"',  # a digit to str.isdigit(), not to int()
    ],
)
def test_a_value_its_parser_once_crashed_on_is_refused_and_the_daemon_goes_on(
    lab: netns.Lab, tmp_path: Path, broken: str
) -> None:
    """These values once raised a traceback out of the parser: a reload ended the daemon,
    and every restart failed the same way. Now they are config errors like any other."""
    # no ban: a banned source's next SYN is dropped at ingress, before the capture sees it
    settings = {"TCP_PORTS": "11,12", "BLOCK_TCP": "0"}
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=settings)
    config = tmp_path / "portsentinel.conf"
    config.write_text(config.read_text() + broken + "\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_line("the running configuration stays in force")
    key = broken.partition("=")[0]
    assert f"{config}:" in daemon.stderr()
    assert key in daemon.stderr()
    assert "Traceback" not in daemon.stderr()
    assert daemon.proc.poll() is None
    nmap_scan(lab, SCANNER, "11-12")
    seen = daemon.wait_for_events(lambda ev: len(ev) >= 2, "probes after the refused reload")
    assert {e["port"] for e in seen} == {11, 12}
    code, _stderr = daemon.stop()
    assert code == 0
    check = subprocess.run(
        [sys.executable, "-m", "portsentinel", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 2, check.stderr  # a config error, not a crash (was 1)
    assert "Traceback" not in check.stderr
    assert f"{config}:" in check.stderr
