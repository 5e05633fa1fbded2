"""The service files as text: the systemd unit, its hosts.deny drop-in and the logrotate
rules, and the copies in ``packaging/`` that ``scripts/gen_docs.py`` writes from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.cli import portsentry2
from portsentinel.cli.main import build_parser
from portsentinel.config.commands import render_defaults
from portsentinel.config.load import parse_config
from portsentinel.system import manual, service_files

REPO = Path(__file__).resolve().parents[3]


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, every value of a repeated key kept in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("packaging/portsentinel.conf", render_defaults()),
        ("packaging/portsentinel.service", service_files.unit_text()),
        ("packaging/portsentinel.logrotate", service_files.LOGROTATE),
    ],
)
def test_committed_packaging_files_equal_the_generated_text(name: str, text: str) -> None:
    assert (REPO / name).read_text(encoding="utf-8") == text, (
        f"{name} is stale: run `python scripts/gen_docs.py`"
    )
    assert manual.generated_files(build_parser(), portsentry2.build_parser())[name] == text


def test_default_config_loads_back_to_the_defaults() -> None:
    found = parse_config((REPO / "packaging/portsentinel.conf").read_text(), "portsentinel.conf")
    assert found.errors == ()
    assert found.config is not None
    assert found.warnings == ()


def test_unit_has_the_sandbox_and_lifecycle_the_daemon_needs() -> None:
    d = unit_directives(service_files.unit_text())
    caps = "CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE"
    assert d["Type"] == ["notify"]  # READY=1 and the loop's WATCHDOG=1 (daemon/sdnotify)
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30s"]
    assert d["ExecStart"] == ["/usr/local/bin/portsentinel run"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == d["Group"] == [service_files.USER]
    assert d["CapabilityBoundingSet"] == [caps]
    assert d["AmbientCapabilities"] == [caps]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in d  # only StateDirectory, LogsDirectory, RuntimeDirectory
    assert d["RuntimeDirectory"] == d["StateDirectory"] == d["LogsDirectory"] == ["portsentinel"]
    families = set(d["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    assert d["After"] == ["network-online.target nftables.service"]
    assert d["Wants"] == ["network-online.target"]
    assert d["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("bad", ["portsentinel", "/opt/my tools/portsentinel"])
def test_unit_refuses_an_exec_path_systemd_would_misread(bad: str) -> None:
    with pytest.raises(ValueError, match="absolute path without spaces"):
        service_files.unit_text(bad)


def test_the_unit_runs_the_installed_program_unless_told_another() -> None:
    assert f"ExecStart={paths.PROGRAM} run\n" in service_files.unit_text()
    assert "ExecStart=/opt/ps/bin/portsentinel run\n" in service_files.unit_text(
        "/opt/ps/bin/portsentinel"
    )


def test_the_files_dropin_makes_exactly_those_paths_writable() -> None:
    text = service_files.files_dropin(["/etc/hosts.deny", "/var/lib/portsentry"])
    assert unit_directives(text) == {"ReadWritePaths": ["-/etc/hosts.deny", "-/var/lib/portsentry"]}
    with pytest.raises(ValueError, match="absolute path without spaces"):
        service_files.files_dropin(["relative/dir"])


def test_the_root_dropin_and_the_user() -> None:
    assert unit_directives(service_files.ROOT) == {"User": ["root"], "Group": ["root"]}
    line = [x for x in service_files.SYSUSERS.splitlines() if not x.startswith("#")]
    assert line[0].split()[:3] == ["u", service_files.USER, "-"]


def test_logrotate_reloads_the_service_after_rotating() -> None:
    assert "systemctl reload portsentinel.service" in service_files.LOGROTATE
    assert "/var/lib/portsentinel/*.history" in service_files.LOGROTATE
