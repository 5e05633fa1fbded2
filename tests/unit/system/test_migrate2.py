"""``portsentinel migrate`` from a PortSentry 2.0 installation built in a temporary root: its
unit's flags (or ``--flags``), config, ignore file and binary blocked file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from portsentinel.config.load import parse_config
from portsentinel.config.modes import read_defaults_file
from portsentinel.errors import ConfigError
from portsentinel.model import Mode
from portsentinel.store.records import BanState
from portsentinel.store.sqlite import Store
from portsentinel.system import migrate2
from unit.system.test_migrate import NEW_CONF, run

CONF_2_0 = """\
# PortSentry 2.0 (strict grammar)
TCP_PORTS="1,11,20-25"
UDP_PORTS="7,9"
IGNORE_FILE="/etc/portsentry/portsentry.ignore"
BLOCKED_FILE="/var/lib/portsentry/portsentry.blocked"
HISTORY_FILE="/var/lib/portsentry/portsentry.history"
BLOCK_TCP="1"
BLOCK_UDP="1"
KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"
KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"
SCAN_TRIGGER="0"
"""
UNIT = """\
[Unit]
Description=Portsentry
[Service]
Type=simple
ExecStart=/usr/sbin/portsentry --stealth -i eth0 -l syslog -S
Restart=on-failure
"""
BLOCKED = ["192.0.2.7", "2001:db8::9"]


def blocked_2_0(addresses: list[str]) -> bytes:
    import ipaddress  # noqa: PLC0415

    out = b""
    for text in addresses:
        address = ipaddress.ip_address(text)
        out += (2 if address.version == 4 else 10).to_bytes(2, "little") + address.packed
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc/portsentry").mkdir(parents=True)
    (tmp_path / "etc/portsentry/portsentry.conf").write_text(CONF_2_0)
    (tmp_path / "etc/portsentry/portsentry.ignore").write_text("127.0.0.1/32\n192.168.1.5/24\n")
    (tmp_path / "var/lib/portsentry").mkdir(parents=True)
    (tmp_path / "var/lib/portsentry/portsentry.blocked").write_bytes(blocked_2_0(BLOCKED))
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/portsentry.service").write_text(UNIT)
    return tmp_path


def test_a_2_0_installation_is_migrated_from_its_unit(root: Path) -> None:
    status, out, err = run(root)
    assert (status, err) == (0, "")
    conf = (root / NEW_CONF.lstrip("/")).read_text()
    found = parse_config(conf, NEW_CONF)
    assert found.errors == ()
    assert found.config is not None
    s = found.config.settings
    assert (s.log_format, s.interfaces, s.syslog) == ("2.0", ("eth0",), True)
    assert s.tcp_ports == frozenset({1, 11, 20, 21, 22, 23, 24, 25})
    assert s.history_file == "/var/lib/portsentry/portsentry.history"  # stays where it was
    assert s.ignore_file == "/etc/portsentry/portsentry.ignore"
    assert (s.kill_route, s.blocked_file) == ("", "")  # kept as comments
    assert '#KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"' in conf
    assert s.kill_hosts_deny == "ALL: $TARGET$ : DENY"
    tcp, udp, _ = read_defaults_file(str(root / s.defaults_file.lstrip("/")))
    assert (tcp, udp) == (Mode.STCP, Mode.SUDP)
    assert "Configuration: /etc/portsentinel/portsentinel.conf  (from " in out
    assert "Bans: 2 addresses of /var/lib/portsentry/portsentry.blocked" in out
    assert "Bans recorded in /var/lib/portsentinel: 2 new, 0 there already" in out
    assert "192.168.1.5/24 has host bits set" in out  # 2.0's ignore rule, told
    assert "-S has no setting" in out
    assert "systemctl stop portsentry" in out
    with Store.open(str(root / "var/lib/portsentinel")) as store:
        bans = [store.ban_for(address) for address in BLOCKED]
    assert all(b is not None and b.state is BanState.PENDING for b in bans)
    first = bans[0]
    assert first is not None
    assert first.evidence["plan"] == ["nftables"]  # applied by the daemon at its start
    assert first.expires is not None
    assert abs(first.expires - time.time() - 3600) < 60  # BAN_DURATION from now


def test_migrating_again_changes_nothing(root: Path) -> None:
    assert run(root)[0] == 0
    before = (root / NEW_CONF.lstrip("/")).read_text()
    status, out, err = run(root)
    assert (status, err) == (0, "")
    assert (root / NEW_CONF.lstrip("/")).read_text() == before
    assert "Bans recorded in /var/lib/portsentinel: 0 new, 2 there already" in out


def test_flags_given_win_over_the_unit_and_connect_watches_the_listed_protocols(
    root: Path,
) -> None:
    conf = CONF_2_0.replace('UDP_PORTS="7,9"\n', "")
    (root / "etc/portsentry/portsentry.conf").write_text(conf)
    status, _out, err = run(root, "--flags=--connect")  # = : argparse takes it as a value
    assert (status, err) == (0, "")
    modes = (root / "etc/portsentinel/modes").read_text()
    assert 'TCP_MODE="tcp"\nUDP_MODE=""\n' in modes
    settings = parse_config((root / NEW_CONF.lstrip("/")).read_text(), "c").config
    assert settings is not None
    assert (settings.settings.interfaces, settings.settings.syslog) == ((), False)


def test_a_file_in_the_way_is_not_overwritten(root: Path) -> None:
    (root / "etc/portsentinel").mkdir(parents=True)
    (root / NEW_CONF.lstrip("/")).write_text('SCAN_TRIGGER="5"\n')
    status, _out, err = run(root)
    assert status == 1
    assert "these files exist and would change" in err
    assert not (root / "var/lib/portsentinel").exists()  # no ban recorded either


def test_no_config_is_a_failure(root: Path) -> None:
    (root / "etc/portsentry/portsentry.conf").unlink()
    status, _out, err = run(root)
    assert status == 1
    assert "no PortSentry 2.0 configuration" in err


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ([], migrate2.Flags()),
        (["--connect", "-c", "/x.conf", "-mraw"],
         migrate2.Flags(mode="connect", config="/x.conf", method="raw")),
        (["-D", "-L", "--interface=eth1", "-i", "ALL"],
         migrate2.Flags(interfaces=("eth1", "ALL"), logoutput=("syslog",), no_local_check=True)),
        (["--disable-service-check", "--logoutput", "stdout", "-d", "-v"],
         migrate2.Flags(no_service_check=True, logoutput=("stdout",))),
    ],
)  # fmt: skip
def test_flags_are_read_as_2_0s_getopt_reads_them(
    words: list[str], expected: migrate2.Flags
) -> None:
    assert migrate2.read_flags(words) == expected


@pytest.mark.parametrize("words", [["--bogus"], ["-i"], ["extra"]])
def test_flags_2_0_refuses_are_a_config_error(words: list[str]) -> None:
    with pytest.raises(ConfigError):
        migrate2.read_flags(words)


def test_the_unit_is_recognised_only_when_it_runs_2_0(tmp_path: Path) -> None:
    assert migrate2.unit_command(tmp_path) is None
    unit = tmp_path / "lib/systemd/system/portsentry.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/sbin/portsentry\n")
    assert migrate2.unit_command(tmp_path) == ("/lib/systemd/system/portsentry.service", [])
    unit.write_text("[Service]\nExecStart=/usr/sbin/portsentry -atcp\n")
    assert migrate2.unit_command(tmp_path) is None  # 1.2's flags
    unit.write_text("[Service]\nExecStart=-/usr/bin/other --stealth\n")
    assert migrate2.unit_command(tmp_path) is None
    unit.write_text("[Service]\nType=simple\n")
    assert migrate2.unit_command(tmp_path) is None
