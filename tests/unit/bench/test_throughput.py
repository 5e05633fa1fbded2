"""The pure parts of ``bench/throughput.py``: PortSentry's config rewrite, the BPF dump the C
reader loads, counters parsed from /proc, the pass/fail rule of a rate step and the summary
table; and that the C tools compile (without root: nothing is run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "e2e"))

import ctools
import portsentry12
from throughput_report import Cost, Drain, Latency, Report, Step

from portsentinel.capture.bpf import PortFilter, build_filter, run_filter

DEBIAN_CONF = """\
# PortSentry Configuration
TCP_PORTS="1,11,15"
ADVANCED_PORTS_TCP="1024"
IGNORE_FILE="/etc/portsentry/portsentry.ignore"
HISTORY_FILE="/var/lib/portsentry/portsentry.history"
BLOCKED_FILE="/var/lib/portsentry/portsentry.blocked"
RESOLVE_HOST = "0"
BLOCK_TCP="0"
KILL_ROUTE="/sbin/route add -host $TARGET$ reject"
#KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"
SCAN_TRIGGER="0"
"""


def test_rewrite_config_leaves_exactly_one_active_line_per_key() -> None:
    run = Path("/tmp/run")
    values = portsentry12.run_settings(
        run, {"BLOCK_TCP": "1", "KILL_ROUTE": "/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"}
    )
    text = portsentry12.rewrite_config(DEBIAN_CONF, values)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    keys = [line.split("=", 1)[0].strip() for line in active]
    assert sorted(keys) == sorted(set(keys)), "a key is set twice"
    assert 'HISTORY_FILE="/tmp/run/portsentry.history"' in active
    assert 'BLOCKED_FILE="/tmp/run/portsentry.blocked"' in active
    assert 'IGNORE_FILE="/tmp/run/portsentry.ignore"' in active
    assert 'BLOCK_TCP="1"' in active
    assert 'KILL_ROUTE="/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"' in active
    # untouched settings and comments stay as shipped
    assert 'TCP_PORTS="1,11,15"' in active
    assert 'RESOLVE_HOST = "0"' in active
    assert '#KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"' in text


def test_rewrite_config_with_nothing_to_change_keeps_every_line() -> None:
    text = portsentry12.rewrite_config(DEBIAN_CONF, {})
    assert text.startswith(DEBIAN_CONF)


def test_raw_socket_drops_sums_the_last_column() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "   6: 00000000:0006 00000000:0000 07 00000000:00000000 00:00000000 00000000     0 "
        "       0 4242 2 0000000000000000 17\n"
        "  17: 00000000:0011 00000000:0000 07 00000000:00000000 00:00000000 00000000     0 "
        "       0 4243 2 0000000000000000 5\n"
    )
    assert portsentry12.raw_socket_drops(table) == 22
    assert portsentry12.raw_socket_drops(table.splitlines()[0]) == 0


def test_filter_dump_round_trips_and_keeps_its_meaning(tmp_path: Path) -> None:
    program = build_filter(PortFilter(), PortFilter.under(1024, {113, 139}))
    path = tmp_path / "atcp.bpf"
    ctools.dump_filter(program, path)
    assert path.stat().st_size == 8 * len(program)  # struct sock_filter is 8 bytes
    loaded = ctools.load_filter(path)
    assert loaded == program
    syn_to_80 = bytes.fromhex(
        "4500002c0000400040060000c6136401c61200019c40005000000001000000006002"
    )
    syn_to_80 += bytes(44 - len(syn_to_80))
    assert run_filter(loaded, syn_to_80, 0)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="sock_filter"):
        ctools.load_filter(path)


def test_a_step_is_clean_only_without_drops_and_with_every_probe() -> None:
    assert Step("C", 50_000, 100_000, 50_000.0, 100_000, 0).clean
    assert not Step("C", 50_000, 100_000, 50_000.0, 100_000, 1).clean
    assert not Step("C", 50_000, 100_000, 50_000.0, 99_999, 0).clean
    step = Step("d", 0, 100_000, 200_000.0, 50_000, 50_000)
    assert step.label == "max"
    assert step.handled_pps == pytest.approx(100_000.0)


def test_report_names_the_highest_clean_rate_and_the_ratio() -> None:
    steps = [
        Step("C ring reader", 50_000, 100_000, 50_000.0, 100_000, 0),
        Step("C ring reader", 100_000, 200_000, 100_000.0, 200_000, 0),
        Step("portsentinel", 50_000, 100_000, 50_000.0, 100_000, 0),
        Step("portsentinel", 100_000, 200_000, 80_000.0, 150_000, 50_000),
    ]
    report = Report(
        steps=steps,
        drains=[Drain("portsentinel", 1000, 1000, 0, 0.5)],
        costs=[Cost("mixed", "portsentinel", 1000, 64_000, 0.001, 80, 80, 0, "100 kpps")],
        latencies=[Latency("portsentinel", 3, [0.001, 0.002, 0.003]), Latency("x", 2, [])],
    )
    table = report.table()
    assert "| portsentinel | 50,000 (50k) | 100,000 / 100,000 | 0 | 80,000, 150,000, 50,000 |" in (
        table
    )
    assert "portsentinel / C reader (highest clean offered rate): 0.50" in table
    assert "| portsentinel | 1,000 | 1,000 | 0 | 0.500 | 500.000 | 2,000 |" in table
    assert "| mixed | portsentinel | 1,000 | 100 kpps | 0.00 | 1.000 | 80 / 80 | 0 |" in table
    assert "| portsentinel | 3/3 | 2.00 | 3.00 | 1.00 | 3.00 |" in table
    assert "| x | 0/2 | - | - | - | - |" in table


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_c_tools_compile_without_warnings(tmp_path: Path) -> None:
    for name in ("ring_reader", "sender"):
        source = ctools.SOURCES / f"{name}.c"
        done = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / name), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        usage = subprocess.run([str(tmp_path / name)], capture_output=True, text=True, check=False)
        assert usage.returncode == 2
        assert "usage:" in usage.stderr
