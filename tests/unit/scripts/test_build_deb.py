"""scripts/build_deb.py's staged tree, without dpkg: the files, their modes, the conffiles,
the checksums and the control fields (the .deb itself is built, linted, installed and purged
by tests/e2e/test_debian_package.py)."""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))

import build_deb

from portsentinel import __version__, paths
from portsentinel.config.commands import render_defaults
from portsentinel.system import service_files


def staged(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    build_deb.stage(root, 1_796_658_775.0)
    return root


def test_the_tree_holds_the_program_the_unit_the_pages_and_the_config(tmp_path: Path) -> None:
    root = staged(tmp_path)
    unit = (root / build_deb.UNIT.lstrip("/")).read_text()
    assert unit == service_files.unit_text(build_deb.PROGRAM)
    assert "ExecStart=/usr/sbin/portsentinel run\n" in unit
    program = root / build_deb.PROGRAM.lstrip("/")
    assert program.read_text().startswith("#!/usr/bin/python3\n")
    assert program.stat().st_mode & 0o777 == 0o755
    module = root / "usr/lib/python3/dist-packages/portsentinel"
    assert (module / "__init__.py").exists()
    assert (module / "system/man/portsentinel.8").exists()  # package data: install reads it
    assert not list(module.rglob("__pycache__"))
    page = root / "usr/share/man/man8/portsentinel.8.gz"
    assert (
        gzip.decompress(page.read_bytes()).decode()
        == (module / "system/man/portsentinel.8").read_text()
    )
    config = root / "etc/portsentinel/portsentinel.conf"
    assert config.read_text() == render_defaults()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/logrotate.d/portsentinel").read_text() == service_files.LOGROTATE
    assert (root / "usr/share/doc/portsentinel/copyright").exists()
    examples = root / "usr/share/doc/portsentinel/examples/fail2ban"
    shipped = sorted(str(f.relative_to(examples)) for f in examples.rglob("*.conf"))
    assert shipped == [
        "filter.d/portsentinel-1.2.conf",
        "filter.d/portsentinel-2.0.conf",
        "jail.d/portsentinel.conf",
    ]


def test_debian_control_conffiles_and_checksums(tmp_path: Path) -> None:
    root = staged(tmp_path)
    control = (root / "DEBIAN/control").read_text()
    fields = dict(line.split(": ", 1) for line in control.splitlines() if not line.startswith(" "))
    assert fields["Package"] == "portsentinel"
    assert fields["Version"] == __version__
    assert fields["Architecture"] == "all"
    assert fields["Depends"] == "python3 (>= 3.11), python3-prometheus-client, nftables, adduser"
    assert fields["Conflicts"] == "portsentry"
    assert (root / "DEBIAN/conffiles").read_text().split() == [
        "/etc/portsentinel/portsentinel.conf",
        "/etc/logrotate.d/portsentinel",
    ]
    sums: dict[str, str] = {}
    for line in (root / "DEBIAN/md5sums").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert "etc/portsentinel/portsentinel.conf" not in sums  # conffiles: dpkg keeps their own
    program = build_deb.PROGRAM.lstrip("/")
    assert sums[program] == hashlib.md5((root / program).read_bytes()).hexdigest()
    for script in ("postinst", "prerm", "postrm"):
        text = (root / "DEBIAN" / script).read_text()
        assert text.startswith("#!/bin/sh\nset -e\n"), script
        assert (root / "DEBIAN" / script).stat().st_mode & 0o777 == 0o755


def test_the_layout_is_the_one_install_recognises() -> None:
    source = Path(paths.__file__).read_text()  # the defaults, not the tests' redirections
    assert f'PACKAGED_UNIT = "{build_deb.UNIT}"' in source
    assert f'PACKAGED_PROGRAM = "{build_deb.PROGRAM}"' in source


def test_the_changelog_date_is_the_build_time(tmp_path: Path) -> None:
    root = staged(tmp_path)
    changelog = gzip.decompress((root / "usr/share/doc/portsentinel/changelog.gz").read_bytes())
    assert f"portsentinel ({__version__}) unstable" in changelog.decode()
    assert "Mon, 07 Dec 2026" in changelog.decode()
