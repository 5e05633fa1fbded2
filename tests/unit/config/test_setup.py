"""What is loaded before the core starts: which config file, the modes, the ignore list, and
the detector's view of the settings. Every default place is the test's own: the tests that
write there ask for ``private_host_paths`` (tests/conftest.py) by name, so that they cannot run
without it and write the host's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.config.setup import (
    Invocation,
    choose_config_file,
    detector_config,
    load_setup,
)
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.model import Mode


def write(path: str | Path, text: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
    return str(path)


def test_the_config_file_is_the_option_else_the_installed_one_else_none(
    tmp_path: Path, private_host_paths: Path
) -> None:
    given = write(tmp_path / "mine.conf", "")
    assert choose_config_file(None) is None  # nothing installed: the embedded defaults
    assert choose_config_file(given) == given
    write(paths.CONFIG_FILE, "")
    assert choose_config_file(None) == paths.CONFIG_FILE
    assert choose_config_file(given) == given  # --config wins over the installed file


def test_embedded_defaults_when_nothing_is_installed() -> None:
    setup = load_setup(None, None)
    assert setup.config.path is None
    modes = (setup.tcp_mode, setup.udp_mode, setup.modes_from)
    assert modes == (Mode.ATCP, Mode.AUDP, "the built-in default")
    assert not setup.ignore
    assert setup.warnings == ()
    assert setup.settings.defaults_file == paths.DEFAULTS_FILE


def test_the_installed_config_and_the_defaults_file_are_read_at_their_places(
    private_host_paths: Path,
) -> None:
    write(paths.CONFIG_FILE, 'SCAN_TRIGGER="3"\n')
    write(paths.DEFAULTS_FILE, 'TCP_MODE="stcp"\nUDP_MODE="sudp"\n')
    setup = load_setup(None, None)
    assert setup.config.path == paths.CONFIG_FILE
    assert setup.settings.scan_trigger == 3
    assert (setup.tcp_mode, setup.udp_mode) == (Mode.STCP, Mode.SUDP)
    assert setup.modes_from == paths.DEFAULTS_FILE


def test_mode_option_wins_over_the_defaults_file(private_host_paths: Path) -> None:
    write(paths.DEFAULTS_FILE, 'TCP_MODE="tcp"\n')
    setup = load_setup(None, "stcp")
    assert (setup.tcp_mode, setup.udp_mode, setup.modes_from) == (Mode.STCP, None, "--mode")


def test_the_ignore_file_is_loaded_with_its_warnings(tmp_path: Path) -> None:
    ignore = write(tmp_path / "ignore", "198.18.0.0/24\n")
    conf = write(tmp_path / "p.conf", f'IGNORE_FILE="{ignore}"\n')
    setup = load_setup(conf, "atcp")
    assert setup.ignore.contains_text("198.18.0.9")
    assert not setup.ignore.contains_text("198.18.1.9")
    assert setup.warnings == ()
    write(ignore, "198.18.0.0/24\n10.0.0.1/0\n")
    setup = load_setup(conf, "atcp")
    assert setup.ignore.contains_text("10.0.0.2")
    warning = f"{ignore}:2: IGNORE_FILE: 10.0.0.1/0 matches every IPv4 address: all responses off"
    assert setup.warnings == (warning,)


def test_a_missing_ignore_file_is_one_warning_and_ignores_nothing(tmp_path: Path) -> None:
    conf = write(tmp_path / "p.conf", f'IGNORE_FILE="{tmp_path}/none"\n')
    setup = load_setup(conf, "atcp")
    assert not setup.ignore
    assert len([w for w in setup.warnings if "none does not exist" in w]) == 1


def test_bad_input_raises_config_errors(tmp_path: Path, private_host_paths: Path) -> None:
    with pytest.raises(ConfigErrors):
        load_setup(write(tmp_path / "p.conf", 'SCAN_TRIGGER="many"\n'), None)
    write(paths.DEFAULTS_FILE, 'TCP_MODE="udp"\n')
    with pytest.raises(ConfigErrors):
        load_setup(None, None)


def test_detector_config_carries_the_settings(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "p.conf",
        'SCAN_TRIGGER="2"\nSCAN_WINDOW="5m"\nBLOCK_UDP="0"\nMAX_TRACKED_SOURCES="100"\n'
        'ADVANCED_PORTS_TCP="2000"\nADVANCED_EXCLUDE_UDP="53"\nBAN_RATE="2.5"\n'
        'BLOCK_MIN_PORTS="3"\nSOURCE_IDLE_TIMEOUT="10m"\nMAX_ACTIVE_BANS="7"\n',
    )
    setup = load_setup(conf, "stcp,audp")
    config = detector_config(setup)
    assert (config.tcp_mode, config.udp_mode) == (Mode.STCP, Mode.AUDP)
    assert config.tcp_ports == setup.settings.tcp_ports
    assert (config.scan_trigger, config.scan_window) == (2, 300.0)
    assert (config.block_tcp, config.block_udp) == (1, 0)
    assert (config.max_sources, config.idle_timeout, config.max_responded) == (100, 600.0, 7)
    assert (config.advanced_tcp_limit, config.advanced_exclude_udp) == (2000, frozenset({53}))
    assert (config.ban_rate, config.block_min_ports) == (2.5, 3)


# What a child Python started by a test sees: the same places as the test (tests/conftest.py).
CHILD = """
import json
from portsentinel.config.setup import load_setup
setup = load_setup(None, None)
print(json.dumps([setup.config.path, setup.modes_from, str(setup.tcp_mode)]))
"""


def test_a_child_python_loads_from_the_tests_places_too(private_host_paths: Path) -> None:
    write(paths.CONFIG_FILE, 'SCAN_TRIGGER="2"\n')
    write(paths.DEFAULTS_FILE, 'TCP_MODE="stcp"\n')
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [paths.CONFIG_FILE, paths.DEFAULTS_FILE, "stcp"]


def test_an_ignore_file_that_is_a_symlink_loop_stops_the_load(tmp_path: Path) -> None:
    """It was skipped as missing, and the daemon ran with nothing ignored."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    conf = write(tmp_path / "p.conf", f'IGNORE_FILE="{loop}"\n')
    with pytest.raises(ConfigErrors, match=f"{loop}: IGNORE_FILE: .*symlink loop"):
        load_setup(conf, "atcp")


def test_an_installed_config_that_is_a_symlink_loop_is_chosen_not_skipped(
    private_host_paths: Path,
) -> None:
    """Skipping it would run the embedded defaults: no ignore list, blocking on."""
    Path(paths.CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.CONFIG_FILE).symlink_to(Path(paths.CONFIG_FILE).name)
    assert choose_config_file(None) == paths.CONFIG_FILE
    with pytest.raises(ConfigErrors, match="symlink loop"):
        load_setup(None, "atcp")
    Path(paths.CONFIG_FILE).unlink()
    Path(paths.CONFIG_FILE).symlink_to("portsentinel.conf.moved")  # dangling
    assert choose_config_file(None) == paths.CONFIG_FILE
    with pytest.raises(ConfigErrors, match="No such file or directory"):
        load_setup(None, "atcp")


def test_2_0s_command_line_watches_only_the_protocols_whose_ports_are_set(
    tmp_path: Path,
) -> None:
    both = write(tmp_path / "both.conf", 'TCP_PORTS="1-1023"\nUDP_PORTS="7,9"\n')
    tcp = write(tmp_path / "tcp.conf", 'TCP_PORTS="1,11"\n')
    udp = write(tmp_path / "udp.conf", 'UDP_PORTS="7"\n')
    two = Invocation(portsentry2=True)
    setup = load_setup(both, "stcp,sudp", two)
    assert (setup.tcp_mode, setup.udp_mode) == (Mode.STCP, Mode.SUDP)
    assert setup.settings.tcp_ports == frozenset(range(1, 1024))
    assert setup.invocation is two
    assert (load_setup(tcp, "stcp,sudp", two).udp_mode) is None
    assert (load_setup(udp, "tcp,udp", two).tcp_mode) is None
    assert load_setup(tcp, "stcp,sudp").udp_mode is Mode.SUDP  # 1.2's run: the defaults
    none = write(tmp_path / "none.conf", 'SCAN_TRIGGER="1"\n')
    with pytest.raises(ConfigError, match="neither TCP_PORTS nor UDP_PORTS"):
        load_setup(none, "stcp,sudp", two)


def test_the_command_lines_interfaces_replace_the_settings(tmp_path: Path) -> None:
    conf = write(tmp_path / "p.conf", 'TCP_PORTS="1"\nINTERFACES="eth0"\n')
    assert load_setup(conf, "stcp").settings.interfaces == ("eth0",)
    chosen = Invocation(portsentry2=True, interfaces=("veth1",))
    assert load_setup(conf, "stcp", chosen).settings.interfaces == ("veth1",)
    every = Invocation(portsentry2=True, interfaces=())
    assert load_setup(conf, "stcp", every).settings.interfaces == ()


def test_log_format_set_in_the_config_wins_else_the_command_line_chooses(tmp_path: Path) -> None:
    unset = write(tmp_path / "unset.conf", 'TCP_PORTS="1"\n')
    two = Invocation(portsentry2=True)
    assert load_setup(unset, "stcp").settings.log_format == "1.2"  # run, or 1.2's -atcp
    assert load_setup(unset, "stcp", two).settings.log_format == "2.0"  # 2.0's flags
    for chosen in ("1.2", "2.0"):
        conf = write(tmp_path / f"{chosen}.conf", f'TCP_PORTS="1"\nLOG_FORMAT="{chosen}"\n')
        assert load_setup(conf, "stcp").settings.log_format == chosen
        assert load_setup(conf, "stcp", two).settings.log_format == chosen
    bad = write(tmp_path / "bad.conf", 'LOG_FORMAT="3.0"\n')
    with pytest.raises(ConfigErrors, match=r"LOG_FORMAT: '3\.0' is not a PortSentry log format"):
        load_setup(bad, "stcp")


def test_a_2_0_installation_gets_2_0s_ignore_file_notes(tmp_path: Path) -> None:
    ignore = write(tmp_path / "portsentry.ignore", "192.168.1.5/24\n")
    conf = write(tmp_path / "p.conf", f'TCP_PORTS="1"\nIGNORE_FILE="{ignore}"\n')
    assert load_setup(conf, "stcp").warnings == ()
    notes = load_setup(conf, "stcp", Invocation(portsentry2=True)).warnings
    assert len(notes) == 1
    assert "never matched in PortSentry 2.0" in notes[0]


def test_the_trigger_counts_each_protocol_apart_in_1_2s_words_only(tmp_path: Path) -> None:
    conf = tmp_path / "portsentinel.conf"
    conf.write_text("")
    assert detector_config(load_setup(str(conf), "atcp,audp")).trigger_per_protocol
    conf.write_text('LOG_FORMAT="2.0"\n')
    assert not detector_config(load_setup(str(conf), "atcp,audp")).trigger_per_protocol
