"""``portsentinel install`` / ``uninstall`` into a temporary root, and the service files."""

from __future__ import annotations

import argparse
import io
import json
import stat
from pathlib import Path

import pytest

from portsentinel.config.commands import render_defaults
from portsentinel.config.load import parse_config
from portsentinel.system import install, manual, service_files

REPO = Path(__file__).resolve().parents[3]
HOSTS_DENY_CONFIG = 'KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"\nBLOCK_TCP="1"\n'


def run_install(root: Path, *, dry_run: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = install.install(root, dry_run=dry_run, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def run_uninstall(root: Path, *, purge: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = install.uninstall(root, purge=purge, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


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
    assert manual.generated_files()[name] == text


def test_default_config_loads_back_to_the_defaults() -> None:
    found = parse_config((REPO / "packaging/portsentinel.conf").read_text(), "portsentinel.conf")
    assert found.errors == ()
    assert found.config is not None
    assert found.warnings == ()


def test_unit_has_the_sandbox_and_lifecycle_the_daemon_needs() -> None:
    d = unit_directives(service_files.unit_text())
    caps = "CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE"
    assert d["Type"] == ["simple"]
    assert d["ExecStart"] == ["/usr/local/bin/portsentinel run"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert d["CapabilityBoundingSet"] == [caps]
    assert d["AmbientCapabilities"] == [caps]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    writable = " ".join(d["ReadWritePaths"]).split()
    assert {"/var/lib/portsentinel", "/var/log", "/run/portsentinel"} <= set(writable)
    assert d["RuntimeDirectory"] == d["StateDirectory"] == ["portsentinel"]
    families = set(d["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    assert d["After"] == ["network-online.target nftables.service"]
    assert d["Wants"] == ["network-online.target"]
    assert d["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("bad", ["portsentinel", "/opt/my tools/portsentinel"])
def test_unit_refuses_an_exec_path_systemd_would_misread(bad: str) -> None:
    with pytest.raises(ValueError, match="absolute path without spaces"):
        service_files.unit_text(bad)


def test_install_puts_every_file_in_place(tmp_path: Path) -> None:
    status, out, err = run_install(tmp_path)
    assert status == 0
    expected = {
        install.UNIT_PATH: service_files.unit_text(),
        install.CONFIG_PATH: render_defaults(),
        install.MAN8_PATH: manual.render_man8(manual.full_parser()),
        install.MAN5_PATH: manual.render_conf5(),
        install.LOGROTATE_PATH: service_files.LOGROTATE,
    }
    for target, text in expected.items():
        assert install.under(tmp_path, target).read_text() == text, target
        assert f"install          {install.under(tmp_path, target)}\n" in out
    mode = stat.S_IMODE(install.under(tmp_path, install.CONFIG_PATH).stat().st_mode)
    assert mode == 0o640
    state = install.under(tmp_path, install.STATE_DIR)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    assert not install.under(tmp_path, install.DROPIN_PATH).exists()
    assert "systemctl daemon-reload\n" in out
    assert "systemctl enable --now portsentinel\n" in out
    assert "/usr/local/bin/portsentinel does not exist" in err


def test_install_uses_the_default_program_when_it_exists(tmp_path: Path) -> None:
    program = install.under(tmp_path, service_files.DEFAULT_EXEC)
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    status, _out, err = run_install(tmp_path)
    assert status == 0
    assert err == ""
    unit = install.under(tmp_path, install.UNIT_PATH).read_text()
    assert "ExecStart=/usr/local/bin/portsentinel run\n" in unit


def test_install_never_overwrites_a_config(tmp_path: Path) -> None:
    config = install.under(tmp_path, install.CONFIG_PATH)
    config.parent.mkdir(parents=True)
    config.write_text('SCAN_TRIGGER="3"\n')
    status, out, _err = run_install(tmp_path)
    assert status == 0
    assert config.read_text() == 'SCAN_TRIGGER="3"\n'
    assert f"keep             {config}  (exists; never overwritten)" in out


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    status, out, _err = run_install(root, dry_run=True)
    assert status == 0
    assert not root.exists()
    assert f"would install    {install.under(root, install.UNIT_PATH)}" in out
    assert out.count(f"would create     {root}/usr/\n") == 1


def test_reinstall_updates_files_and_keeps_the_record(tmp_path: Path) -> None:
    run_install(tmp_path)
    unit = install.under(tmp_path, install.UNIT_PATH)
    unit.write_text("old\n")
    status, out, _err = run_install(tmp_path)
    assert status == 0
    assert unit.read_text() == service_files.unit_text()
    assert f"update           {unit}" in out
    manifest = install.Manifest.load(tmp_path)
    assert manifest is not None
    assert "/usr/local/share/man" in manifest.dirs
    assert manifest.files[install.CONFIG_PATH] is True


def test_hosts_deny_dropin_follows_the_config(tmp_path: Path) -> None:
    config = install.under(tmp_path, install.CONFIG_PATH)
    config.parent.mkdir(parents=True)
    config.write_text(HOSTS_DENY_CONFIG)
    run_install(tmp_path)
    dropin = install.under(tmp_path, install.DROPIN_PATH)
    assert unit_directives(dropin.read_text()) == {"ReadWritePaths": ["/etc"]}
    config.write_text(HOSTS_DENY_CONFIG.replace('BLOCK_TCP="1"', 'BLOCK_TCP="0"\nBLOCK_UDP="0"'))
    _status, out, _err = run_install(tmp_path)
    assert not dropin.exists()
    assert "hosts.deny is no longer used" in out


@pytest.mark.parametrize(
    ("config", "directory"),
    [
        (HOSTS_DENY_CONFIG, "/etc"),
        (HOSTS_DENY_CONFIG + 'HOSTS_DENY_FILE="/srv/tcpd/hosts.deny"\n', "/srv/tcpd"),
        ('KILL_HOSTS_DENY="ALL: $TARGET$"\nBLOCK_TCP="2"\nBLOCK_UDP="0"\n', None),
        ('BLOCK_TCP="1"\n', None),
        ('BLOCK_TCP="9"\n', None),  # broken config: no guess
    ],
)
def test_hosts_deny_directory(config: str, directory: str | None) -> None:
    assert install.hosts_deny_directory(config) == directory


def test_uninstall_removes_exactly_what_install_put(tmp_path: Path) -> None:
    keep = install.under(tmp_path, "/usr/local/share/man/man8/other.8")
    keep.parent.mkdir(parents=True)
    keep.write_text("other\n")
    before = tree(tmp_path)
    run_install(tmp_path)
    status, out, _err = run_uninstall(tmp_path)
    assert status == 0
    config = install.under(tmp_path, install.CONFIG_PATH)
    assert config.read_text() == render_defaults()
    assert "configuration; uninstall --purge removes it" in out
    assert tree(tmp_path) == before | {
        "etc",
        "etc/portsentinel",
        "etc/portsentinel/portsentinel.conf",
    }
    assert "systemctl daemon-reload" in out


def test_uninstall_purge_leaves_the_root_as_it_was(tmp_path: Path) -> None:
    before = tree(tmp_path)
    run_install(tmp_path)
    store = install.under(tmp_path, install.STATE_DIR) / "portsentinel.db"
    store.write_text("bans")
    status, _out, _err = run_uninstall(tmp_path, purge=True)
    assert status == 0
    assert tree(tmp_path) == before


def test_uninstall_keeps_the_state_dir_with_bans(tmp_path: Path) -> None:
    run_install(tmp_path)
    store = install.under(tmp_path, install.STATE_DIR) / "portsentinel.db"
    store.write_text("bans")
    run_uninstall(tmp_path)
    assert store.read_text() == "bans"
    assert not install.under(tmp_path, install.MANIFEST_PATH).exists()


def test_uninstall_refuses_while_the_service_is_enabled(tmp_path: Path) -> None:
    run_install(tmp_path)
    wants = install.under(tmp_path, "/etc/systemd/system/multi-user.target.wants")
    wants.mkdir()
    (wants / "portsentinel.service").symlink_to(install.UNIT_PATH)
    status, _out, err = run_uninstall(tmp_path)
    assert status == 1
    assert "still enabled" in err
    assert "systemctl disable --now portsentinel" in err
    assert install.under(tmp_path, install.UNIT_PATH).exists()


def test_uninstall_without_a_record_removes_the_standard_files(tmp_path: Path) -> None:
    run_install(tmp_path)
    install.under(tmp_path, install.MANIFEST_PATH).unlink()
    status, out, _err = run_uninstall(tmp_path)
    assert status == 0
    assert "no install record" in out
    for target in install.STANDARD_FILES:
        assert not install.under(tmp_path, target).exists(), target
    assert install.under(tmp_path, install.CONFIG_PATH).exists()


def test_manifest_survives_junk(tmp_path: Path) -> None:
    path = install.under(tmp_path, install.MANIFEST_PATH)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"files": ["not", "a", "dict"], "dirs": []}))
    assert install.Manifest.load(tmp_path) is None


def test_verbs_parse_and_dispatch(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="portsentinel")
    install.add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["install", "--root", str(tmp_path), "--dry-run"])
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 0
    assert "would install" in out.getvalue()
    assert list(tmp_path.iterdir()) == []
    args = parser.parse_args(["uninstall", "--root", str(tmp_path), "--purge"])
    assert args.purge is True
    assert args.handler(args, out, err) == 0


def test_install_reports_a_failure_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    parser = argparse.ArgumentParser(prog="portsentinel")
    install.add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["install", "--root", str(blocker)])
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 1
    assert err.getvalue().startswith("portsentinel: install failed:")
