"""``install``, ``uninstall`` and ``migrate`` as the command line parses and runs them (their
work is tested in tests/unit/system/)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from portsentinel.cli import system as verbs


def test_verbs_parse_and_dispatch(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="portsentinel")
    verbs.add_parsers(parser.add_subparsers(dest="verb"))
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
    verbs.add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["install", "--root", str(blocker)])
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 1
    assert err.getvalue().startswith("portsentinel: install failed:")


def test_migrate_without_portsentry_is_a_failure(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="portsentinel")
    verbs.add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["migrate", "--root", str(tmp_path), "--output", "rel.conf"])
    assert args.output == "rel.conf"
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 1
    assert err.getvalue().startswith("portsentinel: no PortSentry configuration: ")
    assert list(tmp_path.iterdir()) == []


def test_migrate_reads_a_relative_from_directory_from_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``migrate --from etc-portsentry`` reads ./etc-portsentry, not /etc-portsentry."""
    debian = Path(__file__).parents[2] / "fixtures" / "config" / "debian"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "portsentry.conf").write_text((debian / "portsentry.conf").read_text())
    (tmp_path / "default-portsentry").write_text('TCP_MODE="atcp"\nUDP_MODE="audp"\n')
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser(prog="portsentinel")
    verbs.add_parsers(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["migrate", "--from", "old", "--defaults", "default-portsentry",
                              "--output", "new/portsentinel.conf"])  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    assert args.handler(args, out, err) == 0, err.getvalue()
    written = (tmp_path / "new" / "portsentinel.conf").read_text()
    assert "portsentry.conf" in out.getvalue()
    assert written.strip()
