"""``config defaults`` and ``config check``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.config.commands import check, quote, render_defaults, render_effective
from portsentinel.config.load import load_config, parse_config
from portsentinel.config.schema import SETTINGS, Settings

FIXTURES = Path(__file__).parents[2] / "fixtures" / "config" / "debian"


def run_check(path: str | None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = check(path, out, err)
    return status, out.getvalue(), err.getvalue()


def test_defaults_load_back_to_exactly_the_defaults() -> None:
    found = parse_config(render_defaults(), "defaults.conf")
    assert found.config is not None
    # The dump names the host paths as shipped; here ``paths`` points elsewhere (conftest).
    shipped = {spec.attr: spec.parse(spec.default) for spec in SETTINGS}
    assert found.config.settings == Settings(**shipped)
    assert 'DEFAULTS_FILE="/etc/default/portsentry"\n' in render_defaults()
    assert found.warnings == ()
    assert all(origin.startswith("defaults.conf:") for origin in found.config.origins.values())


def test_defaults_document_every_setting() -> None:
    text = render_defaults()
    for spec in SETTINGS:
        block = text.split(f"\n{spec.key}=", 1)[0].rsplit("\n\n", 1)[1]
        assert f"# {spec.help}." in block
        assert f"unit: {spec.unit}" in block
        assert "from PortSentry 1.2" in block or "from PortSentinel" in block


def test_quote() -> None:
    assert quote("a b") == '"a b"'
    assert quote('say "hi"') == "'say \"hi\"'"
    with pytest.raises(ValueError, match="both quote"):
        quote("\"'")


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_check_prints_effective_settings_with_origins(tmp_path: Path) -> None:
    ignore = write(tmp_path, "ignore", (FIXTURES / "portsentry.ignore.static").read_text())
    defaults = write(tmp_path, "default", (FIXTURES / "default-portsentry").read_text())
    conf = write(
        tmp_path,
        "p.conf",
        f'IGNORE_FILE="{ignore}"\nDEFAULTS_FILE="{defaults}"\nSCAN_TRIGGER="2"\n'
        'PORT_BANNER="it\'s # logged"\n',
    )
    status, out, err = run_check(conf)
    assert (status, err) == (0, "")
    assert f"# Ignore list: 2 entries from {ignore}\n" in out
    assert f"# Modes without --mode: atcp,audp (from {defaults})\n" in out
    assert f'SCAN_TRIGGER="2"  # {conf}:3\n' in out
    assert 'BAN_DURATION="1h"  # default\n' in out
    # The printout is itself a config that loads to the same settings.
    again = write(tmp_path, "again.conf", out)
    assert load_config(again).settings == load_config(conf).settings


def test_check_warnings_keep_exit_zero(tmp_path: Path) -> None:
    conf = write(
        tmp_path, "p.conf", f'TCP_PORT="1"\nDEFAULTS_FILE=""\nIGNORE_FILE="{tmp_path}/x"\n'
    )
    status, out, err = run_check(conf)
    assert status == 0
    assert err.splitlines() == [
        f"warning: {conf}:1: TCP_PORT: unknown key, ignored (did you mean TCP_PORTS?)",
        f"warning: {conf}:3: IGNORE_FILE: {tmp_path}/x does not exist; nothing will be ignored",
    ]
    assert f"# Ignore list: none ({tmp_path}/x does not exist)\n" in out
    assert "# Modes without --mode: atcp,audp (from the built-in default)\n" in out


def test_check_errors_exit_two_and_print_no_settings(tmp_path: Path) -> None:
    conf = write(tmp_path, "p.conf", 'TCP_PORT="1"\nBLOCK_TCP="7"\n')
    status, out, err = run_check(conf)
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        f"warning: {conf}:1: TCP_PORT: unknown key, ignored (did you mean TCP_PORTS?)",
        f"{conf}:2: BLOCK_TCP: '7' is not 0, 1 or 2 (expected 0 (log only), 1 (block) or 2 "
        "(run KILL_RUN_CMD only))",
    ]


def test_check_reports_ignore_and_defaults_file_errors(tmp_path: Path) -> None:
    ignore = write(tmp_path, "ignore", "127.0.0.1\nrouter.lan\n0.0.0.0/0\n")
    defaults = write(tmp_path, "default", 'TCP_MODE="udp"\n')
    conf = write(tmp_path, "p.conf", f'IGNORE_FILE="{ignore}"\nDEFAULTS_FILE="{defaults}"\n')
    status, out, err = run_check(conf)
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        f"{ignore}:2: IGNORE_FILE: 'router.lan' is not an address (expected an IPv4/IPv6 "
        "address or CIDR range)",
        f"{defaults}:1: TCP_MODE: udp is not a TCP mode (expected tcp or stcp or atcp)",
    ]


def test_check_ignore_warnings_are_shown(tmp_path: Path) -> None:
    ignore = write(tmp_path, "ignore", "::/0\n")
    conf = write(tmp_path, "p.conf", f'IGNORE_FILE="{ignore}"\nDEFAULTS_FILE=""\n')
    status, _out, err = run_check(conf)
    assert status == 0
    assert err == f"warning: {ignore}:1: IGNORE_FILE: ::/0 matches every IPv6 address: all " \
        "responses off\n"  # fmt: skip


def test_check_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    status, out, err = run_check(str(tmp_path / "none.conf"))
    assert (status, out) == (2, "")
    assert err == (
        f"{tmp_path}/none.conf: cannot read the file: No such file or directory "
        "(expected a readable config file)\n"
    )


def test_check_an_ignore_file_that_is_a_symlink_loop_is_an_error(tmp_path: Path) -> None:
    """It was "none (... does not exist)" and exit 0: a check passed that nothing ignored."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    conf = write(tmp_path, "p.conf", f'IGNORE_FILE="{loop}"\nDEFAULTS_FILE=""\n')
    status, out, err = run_check(conf)
    assert (status, out) == (2, "")
    assert err == (
        f"{loop}: IGNORE_FILE: cannot read the file: a symlink loop (too many levels of "
        "symbolic links) (expected a readable file)\n"
    )


def test_check_a_fifo_for_any_file_is_an_error_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status, _out, err = run_check(str(fifo))
    assert status == 2
    assert "a FIFO (named pipe), not a regular file" in err
    conf = write(tmp_path, "p.conf", f'IGNORE_FILE="{fifo}"\nDEFAULTS_FILE="{fifo}"\n')
    status, _out, err = run_check(conf)
    assert status == 2
    assert f"{fifo}: IGNORE_FILE: cannot read the file: a FIFO" in err
    assert f"{fifo}: DEFAULTS_FILE: cannot read the file: a FIFO" in err


def test_check_embedded_defaults_reads_the_defaults_file_at_its_default_place(
    private_host_paths: Path,
) -> None:
    defaults = Path(paths.DEFAULTS_FILE)  # under private_host_paths (tests/conftest.py)
    defaults.parent.mkdir(parents=True)
    defaults.write_text('TCP_MODE="stcp"\nUDP_MODE=""\n')
    status, out, err = run_check(None)
    assert (status, err) == (0, "")
    assert f"# Modes without --mode: stcp (from {defaults})\n" in out
    assert out.startswith("# Effective configuration: embedded defaults (no file)\n")
    assert f'DEFAULTS_FILE="{defaults}"  # default\n' in out
    assert 'BLOCK_TCP="1"  # default\n' in out


def test_render_effective_is_in_declaration_order() -> None:
    text = render_effective(Settings(), {})
    keys = [line.split("=", 1)[0] for line in text.splitlines()]
    assert keys == [spec.key for spec in SETTINGS]
