"""``portsentinel install`` / ``uninstall`` into a temporary root, and the service files."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.config.commands import render_defaults
from portsentinel.system import install, service_files

REPO = Path(__file__).resolve().parents[3]
HOSTS_DENY_CONFIG = 'KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"\nBLOCK_TCP="1"\n'


def layout() -> install.Layout:
    """Where install puts things, as ``paths`` says while the test runs."""
    return install.Layout.current()


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


def test_install_puts_every_file_in_place(tmp_path: Path) -> None:
    status, out, err = run_install(tmp_path)
    assert status == 0
    expected = {
        layout().unit: service_files.unit_text(),
        layout().config: render_defaults(),
        layout().man_page("portsentinel.8"): install.shipped_man_page("portsentinel.8"),
        layout().man_page("portsentinel.conf.5"): install.shipped_man_page("portsentinel.conf.5"),
        layout().logrotate: service_files.LOGROTATE,
        layout().sysusers: service_files.SYSUSERS,
    }
    for target, text in expected.items():
        assert install.under(tmp_path, target).read_text() == text, target
        assert f"install          {install.under(tmp_path, target)}\n" in out
    mode = stat.S_IMODE(install.under(tmp_path, layout().config).stat().st_mode)
    assert mode == 0o640
    state = install.under(tmp_path, layout().state_dir)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    assert not any(install.under(tmp_path, d).exists() for d in layout().dropins)
    assert "systemctl daemon-reload\n" in out
    assert "systemctl enable --now portsentinel\n" in out
    assert "/usr/local/bin/portsentinel does not exist" in err


def test_install_uses_the_default_program_when_it_exists(tmp_path: Path) -> None:
    program = install.under(tmp_path, paths.PROGRAM)
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    status, _out, err = run_install(tmp_path)
    assert status == 0
    assert err == ""
    unit = install.under(tmp_path, layout().unit).read_text()
    assert "ExecStart=/usr/local/bin/portsentinel run\n" in unit


def test_install_never_overwrites_a_config(tmp_path: Path) -> None:
    config = install.under(tmp_path, layout().config)
    config.parent.mkdir(parents=True)
    config.write_text('SCAN_TRIGGER="3"\n')
    status, out, _err = run_install(tmp_path)
    assert status == 0
    assert config.read_text() == 'SCAN_TRIGGER="3"\n'
    assert f"keep             {config}  (exists; never overwritten)" in out


def test_install_refuses_a_config_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO there once made install wait for a writer for ever."""
    config = install.under(tmp_path, layout().config)
    config.parent.mkdir(parents=True)
    os.mkfifo(config)
    with pytest.raises(OSError, match="a FIFO"):
        run_install(tmp_path)
    assert stat.S_ISFIFO(config.lstat().st_mode)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    status, out, _err = run_install(root, dry_run=True)
    assert status == 0
    assert not root.exists()
    assert f"would install    {install.under(root, layout().unit)}" in out
    assert out.count(f"would create     {root}/usr/\n") == 1


def test_reinstall_updates_files_and_keeps_the_record(tmp_path: Path) -> None:
    run_install(tmp_path)
    unit = install.under(tmp_path, layout().unit)
    unit.write_text("old\n")
    status, out, _err = run_install(tmp_path)
    assert status == 0
    assert unit.read_text() == service_files.unit_text()
    assert f"update           {unit}" in out
    manifest = install.Manifest.load(tmp_path, layout())
    assert manifest is not None
    assert "/usr/local/share/man" in manifest.dirs
    assert manifest.files[layout().config] is True


def test_the_dropins_follow_the_config(tmp_path: Path) -> None:
    config = install.under(tmp_path, layout().config)
    config.parent.mkdir(parents=True)
    config.write_text(HOSTS_DENY_CONFIG + 'COMMANDS_AS_ROOT="1"\n')
    old = install.under(tmp_path, f"{paths.UNIT_DIR}/{service_files.OLD_DROPINS[0]}")
    old.parent.mkdir(parents=True)
    old.write_text("[Service]\nReadWritePaths=/etc\n")  # an earlier version's
    run_install(tmp_path)
    files = install.under(tmp_path, layout().files_dropin)
    assert unit_directives(files.read_text()) == {"ReadWritePaths": ["-/etc/hosts.deny"]}
    root = install.under(tmp_path, layout().root_dropin)
    assert unit_directives(root.read_text()) == {"User": ["root"], "Group": ["root"]}
    assert not old.exists()
    config.write_text(HOSTS_DENY_CONFIG.replace('BLOCK_TCP="1"', 'BLOCK_TCP="0"\nBLOCK_UDP="0"'))
    _status, out, _err = run_install(tmp_path)
    assert not files.exists()
    assert not root.exists()
    assert out.count("the configuration no longer needs it") == 2


def test_uninstall_removes_exactly_what_install_put(tmp_path: Path) -> None:
    keep = install.under(tmp_path, "/usr/local/share/man/man8/other.8")
    keep.parent.mkdir(parents=True)
    keep.write_text("other\n")
    before = tree(tmp_path)
    run_install(tmp_path)
    status, out, _err = run_uninstall(tmp_path)
    assert status == 0
    config = install.under(tmp_path, layout().config)
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
    store = install.under(tmp_path, layout().state_dir) / "portsentinel.db"
    store.write_text("bans")
    status, _out, _err = run_uninstall(tmp_path, purge=True)
    assert status == 0
    assert tree(tmp_path) == before


def test_uninstall_keeps_the_state_dir_with_bans(tmp_path: Path) -> None:
    run_install(tmp_path)
    store = install.under(tmp_path, layout().state_dir) / "portsentinel.db"
    store.write_text("bans")
    run_uninstall(tmp_path)
    assert store.read_text() == "bans"
    assert not install.under(tmp_path, layout().manifest).exists()


def test_uninstall_refuses_while_the_service_is_enabled(tmp_path: Path) -> None:
    run_install(tmp_path)
    wants = install.under(tmp_path, "/etc/systemd/system/multi-user.target.wants")
    wants.mkdir()
    (wants / "portsentinel.service").symlink_to(layout().unit)
    status, _out, err = run_uninstall(tmp_path)
    assert status == 1
    assert "still enabled" in err
    assert "systemctl disable --now portsentinel" in err
    assert install.under(tmp_path, layout().unit).exists()


def test_uninstall_without_a_record_removes_the_standard_files(tmp_path: Path) -> None:
    run_install(tmp_path)
    install.under(tmp_path, layout().manifest).unlink()
    status, out, _err = run_uninstall(tmp_path)
    assert status == 0
    assert "no install record" in out
    for target in layout().standard_files:
        assert not install.under(tmp_path, target).exists(), target
    assert install.under(tmp_path, layout().config).exists()


def test_manifest_survives_junk(tmp_path: Path) -> None:
    path = install.under(tmp_path, layout().manifest)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"files": ["not", "a", "dict"], "dirs": []}))
    assert install.Manifest.load(tmp_path, layout()) is None


def test_beside_the_debian_package_install_writes_only_the_dropins(tmp_path: Path) -> None:
    packaged = install.under(tmp_path, paths.PACKAGED_UNIT)
    packaged.parent.mkdir(parents=True)
    packaged.write_text("[Service]\n")
    config = install.under(tmp_path, layout().config)
    config.parent.mkdir(parents=True)
    config.write_text(HOSTS_DENY_CONFIG)
    status, out, err = run_install(tmp_path)
    assert (status, err) == (0, "")
    assert "is the Debian package's: writing drop-ins only" in out
    assert install.under(tmp_path, layout().files_dropin).exists()
    for target in (layout().unit, layout().logrotate, layout().sysusers):
        assert not install.under(tmp_path, target).exists(), target
    assert "systemctl restart portsentinel\n" in out
