"""The loader: PortSentry syntax, typed values, every fault located as FILE:LINE: KEY."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portsentinel.config.commands import render_effective
from portsentinel.config.load import (
    MAX_CONFIG_BYTES,
    LoadedConfig,
    diagnose_config,
    load_config,
    parse_config,
    reference_warnings,
)
from portsentinel.config.schema import KEYS, Settings
from portsentinel.config.types import BlockLevel
from portsentinel.errors import ConfigError, ConfigErrors

DEBIAN = Path(__file__).parents[2] / "fixtures" / "config" / "debian" / "portsentry.conf"
# Debian's "aware" lists, as the reference spells them (ranges written out).
AWARE_TCP = {
    1, 11, 15, 79, 111, 119, 143, 540, 635, 1080, 1524, 2000, 5742, 6667, 12345, 12346,
    20034, 27665, 31337, 32771, 32772, 32773, 32774, 40421, 49724, 54320,
}  # fmt: skip
AWARE_UDP = {
    1, 7, 9, 69, 161, 162, 513, 635, 640, 641, 700, 37444, 34555, 31335, 32770, 32771,
    32772, 32773, 32774, 31337, 54321,
}  # fmt: skip
LOCATED = re.compile(r"^t\.conf:\d+: [A-Z_]+: .+ \(expected .+\)$")


def parsed(text: str) -> LoadedConfig:
    found = parse_config(text, "t.conf")
    assert found.config is not None, [e.render() for e in found.errors]
    return found.config


def errors_of(text: str | bytes) -> list[str]:
    found = parse_config(text, "t.conf")
    assert found.config is None
    return [e.render() for e in found.errors]


def line_of(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    return lines.index(text) + 1


# --- Debian's stock file ---------------------------------------------------------------------


def test_debian_file_loads_unchanged_with_the_expected_values() -> None:
    loaded = load_config(str(DEBIAN))
    s = loaded.settings
    assert s.tcp_ports == frozenset(AWARE_TCP)
    assert s.udp_ports == frozenset(AWARE_UDP)
    assert (s.advanced_ports_tcp, s.advanced_ports_udp) == (1024, 1024)
    assert s.advanced_exclude_tcp == frozenset({113, 139})
    assert s.advanced_exclude_udp == frozenset({520, 138, 137, 67})
    assert s.ignore_file == "/etc/portsentry/portsentry.ignore"
    assert s.history_file == "/var/lib/portsentry/portsentry.history"
    assert s.blocked_file == "/var/lib/portsentry/portsentry.blocked"
    assert s.resolve_host is False
    assert (s.block_tcp, s.block_udp) == (BlockLevel.LOG_ONLY, BlockLevel.LOG_ONLY)
    assert s.kill_route == "/sbin/route add -host $TARGET$ reject"
    assert s.kill_hosts_deny == "ALL: $TARGET$ : DENY"
    assert (s.kill_run_cmd, s.kill_run_cmd_first, s.port_banner) == ("", False, "")
    assert s.scan_trigger == 0
    resolve_line = line_of(DEBIAN, 'RESOLVE_HOST = "0"')
    assert loaded.origins["RESOLVE_HOST"] == f"{DEBIAN}:{resolve_line}"
    assert loaded.origins["KILL_RUN_CMD"] == "default"
    assert loaded.origins["BAN_DURATION"] == "default"
    assert set(loaded.origins) == KEYS


def test_debian_file_gives_only_warnings_about_this_host(
    tmp_path: Path, private_host_paths: Path
) -> None:
    # The file names places on the host (its ignore file, /var/lib/portsentry, /sbin/route);
    # moved under the test's empty host (tests/conftest.py), with hosts.deny's default place,
    # they are missing on every machine alike.
    text = DEBIAN.read_text()
    for place in ("/etc/portsentry/", "/var/lib/portsentry/", "/sbin/route"):
        text = text.replace(place, f"{private_host_paths}{place}")
    conf = tmp_path / "portsentry.conf"
    conf.write_text(text)
    loaded = load_config(str(conf))
    line = {
        text.partition("=")[0]: number
        for number, text in enumerate(text.splitlines(), start=1)
        if text.partition("=")[0] in ("IGNORE_FILE", "HISTORY_FILE", "BLOCKED_FILE", "KILL_ROUTE")
    }
    assert loaded.warnings == (
        f"{conf}:{line['KILL_ROUTE']}: KILL_ROUTE: not used: BLOCK_BACKEND=nftables blocks instead",
        f"{conf}:{line['IGNORE_FILE']}: IGNORE_FILE: {private_host_paths}/etc/portsentry/"
        "portsentry.ignore does not exist; nothing will be ignored",
        f"{conf}:{line['HISTORY_FILE']}: HISTORY_FILE: directory {private_host_paths}/var/lib/"
        "portsentry does not exist",
        f"{conf}:{line['BLOCKED_FILE']}: BLOCKED_FILE: directory {private_host_paths}/var/lib/"
        "portsentry does not exist",
        # KILL_HOSTS_DENY is set and HOSTS_DENY_FILE is left at its default place (no line)
        f"{conf}: HOSTS_DENY_FILE: {private_host_paths}/etc does not exist",
        f"{conf}:{line['KILL_ROUTE']}: KILL_ROUTE: command {private_host_paths}/sbin/route does "
        "not exist or is not executable here",
    )


# --- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        'SCAN_TRIGGER="3"',
        'SCAN_TRIGGER = "3"',
        "SCAN_TRIGGER='3'",
        "SCAN_TRIGGER=3",
        "SCAN_TRIGGER=3  # three hits",
        'SCAN_TRIGGER="3"  # three hits',
        '  SCAN_TRIGGER\t=\t"3"\t',
        'SCAN_TRIGGER="3"\r',
    ],
)
def test_assignment_forms(line: str) -> None:
    config = parsed(f"# comment\n\n   # indented comment\n{line}\n")
    assert config.settings.scan_trigger == 3
    assert config.origins["SCAN_TRIGGER"] == "t.conf:4"
    assert config.warnings == ()


def test_quoted_values_keep_hashes_spaces_and_the_other_quote() -> None:
    s = parsed('PORT_BANNER="Go away # now, it\'s logged"\nKILL_RUN_CMD=\'/bin/x "$TARGET$"\'\n')
    assert s.settings.port_banner == "Go away # now, it's logged"
    assert s.settings.kill_run_cmd == '/bin/x "$TARGET$"'


def test_empty_value_means_unset() -> None:
    s = parsed('SCAN_TRIGGER=""\nBLOCK_TCP=""\nBAN_DURATION=\nKILL_ROUTE=""\nDEFAULTS_FILE=""\n')
    defaults = Settings()
    assert s.settings.scan_trigger == defaults.scan_trigger
    assert s.settings.block_tcp is defaults.block_tcp
    assert s.settings.ban_duration == defaults.ban_duration
    assert s.settings.kill_route == ""
    assert s.settings.defaults_file == ""  # a string setting: empty means "none"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ('TCP_PORTS="1,70000"', "t.conf:1: TCP_PORTS: port 70000 is out of range (expected "
         "comma-separated ports 1-65535 or inclusive ranges a-b, e.g. 1,11,32771-32774)"),
        ('BLOCK_TCP="3"', "t.conf:1: BLOCK_TCP: '3' is not 0, 1 or 2 (expected 0 (log only), "
         "1 (block) or 2 (run KILL_RUN_CMD only))"),
        ('SCAN_TRIGGER="12abc"', "t.conf:1: SCAN_TRIGGER: '12abc' is not a whole number "
         "(expected a whole number >= 0 and <= 65535)"),
        ('TCP_PORTS="1,2', 't.conf:1: TCP_PORTS: the closing " is missing (expected KEY="value")'),
        ('TCP_PORTS="1" 2', "t.conf:1: TCP_PORTS: unexpected text '2' after the value "
         "(expected only a # comment after the closing quote)"),
        ('TCP_PORTS "1"', "t.conf:1: TCP_PORTS: no '=' after the key (expected KEY=\"value\")"),
        ("KILL_ROUTE=/sbin/route add", "t.conf:1: KILL_ROUTE: an unquoted value with spaces "
         '(expected quotes around it: KILL_ROUTE="...")'),
        ('KILL_RUN_CMD=a"b"', "t.conf:1: KILL_RUN_CMD: a quote inside an unquoted value "
         "(expected the whole value in quotes)"),
        ('PORT_BANNER="a\x01b"', "t.conf:1: PORT_BANNER: the value contains a control "
         "character (expected printable text)"),
        ('"KEY"="1"', 't.conf:1: not a setting line (expected KEY="value")'),
    ],
)  # fmt: skip
def test_error_renderings(text: str, rendered: str) -> None:
    assert errors_of(text) == [rendered]


@pytest.mark.parametrize(
    "line",
    [
        'RESOLVE_HOST="yes"', 'BLOCK_UDP="-1"', 'ADVANCED_PORTS_TCP="65537"',
        'ADVANCED_EXCLUDE_UDP="67,x"', 'UDP_PORTS="0"', 'KILL_RUN_CMD_FIRST="first"',
        'SCAN_TRIGGER="-1"', 'BLOCK_BACKEND="pf"', 'BAN_DURATION="0"', 'BAN_DURATION="1w"',
        'BAN_REPEAT_FACTOR="0.5"', 'BAN_MAX_DURATION="forever"', 'SCAN_WINDOW="permanent"',
        'MAX_TRACKED_SOURCES="0"', 'MAX_PORTS_PER_SOURCE="many"', 'SOURCE_IDLE_TIMEOUT="0"',
        'MAX_ACTIVE_BANS="1e4"',
    ],
)  # fmt: skip
def test_every_value_error_is_located(line: str) -> None:
    (rendered,) = errors_of(f"# header\n{line}\n")
    assert LOCATED.match(rendered), rendered
    assert rendered.startswith(f"t.conf:2: {line.split('=', maxsplit=1)[0]}: ")


def test_bytes_that_are_not_utf8() -> None:
    assert errors_of(b'# caf\xe9 is fine in a comment\nPORT_BANNER="\xff"\n') == [
        "t.conf:2: PORT_BANNER: the value contains bytes that are not UTF-8 "
        "(expected printable text)"
    ]


def test_all_errors_are_collected_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text('BLOCK_TCP="9"\nSCAN_TRIGGER="x"\nTCP_PORTS="1"\nUDP_PORTS="0"\n')
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    lines = [(e.file, e.line, e.key) for e in caught.value.errors]
    assert lines == [(str(path), 1, "BLOCK_TCP"), (str(path), 2, "SCAN_TRIGGER"),
                     (str(path), 4, "UDP_PORTS")]  # fmt: skip
    assert str(caught.value).count("\n") == 2


# --- unknown and duplicate keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "warning"),
    [
        ("TCP_PORT", "t.conf:1: TCP_PORT: unknown key, ignored (did you mean TCP_PORTS?)"),
        ("scan_trigger", "t.conf:1: scan_trigger: unknown key, ignored (did you mean "
         "SCAN_TRIGGER?)"),
        ("KILL_HOST_DENY", "t.conf:1: KILL_HOST_DENY: unknown key, ignored (did you mean "
         "KILL_HOSTS_DENY?)"),
        ("XYZZY", "t.conf:1: XYZZY: unknown key, ignored"),
    ],
)  # fmt: skip
def test_unknown_key_is_a_warning_with_a_suggestion(key: str, warning: str) -> None:
    config = parsed(f'{key}="not even checked"\n')
    assert config.warnings == (warning,)
    assert config.settings == Settings()


def test_duplicate_key_last_wins_with_a_warning_naming_both_lines() -> None:
    config = parsed('SCAN_TRIGGER="1"\n# again\nSCAN_TRIGGER="5"\n')
    assert config.settings.scan_trigger == 5
    assert config.origins["SCAN_TRIGGER"] == "t.conf:3"
    assert config.warnings == ("t.conf:3: SCAN_TRIGGER: also set on line 1; line 3 wins",)


def test_a_bad_first_occurrence_is_still_an_error() -> None:
    assert len(errors_of('SCAN_TRIGGER="x"\nSCAN_TRIGGER="5"\n')) == 1


# --- warnings about meaning ------------------------------------------------------------------


def test_lint_warnings() -> None:
    config = parsed(
        'BLOCK_BACKEND="legacy"\nKILL_ROUTE="/sbin/route add -host reject"\n'
        'KILL_HOSTS_DENY="ALL: $TARGET$"\nKILL_RUN_CMD_FIRST="5"\nKILL_RUN_CMD="logger x"\n'
    )
    assert config.settings.kill_run_cmd_first is True
    assert config.warnings == (
        "t.conf:2: KILL_ROUTE: has no $TARGET$ macro; PortSentry 1.2 skips such an action",
        "t.conf:4: KILL_RUN_CMD_FIRST: '5' is read as 1 (expected 0 or 1)",
    )


def test_consistency_warnings_point_at_the_key_or_the_file() -> None:
    config = parsed(
        'BLOCK_TCP="2"\nBLOCK_BACKEND="legacy"\nBAN_DURATION="2d"\nBAN_MAX_DURATION="1d"\n'
    )
    assert config.warnings == (
        "t.conf:1: BLOCK_TCP: is 2 but KILL_RUN_CMD is empty",
        "t.conf: BLOCK_UDP: is 1 but BLOCK_BACKEND=legacy has no KILL_ROUTE or KILL_HOSTS_DENY",
        "t.conf:4: BAN_MAX_DURATION: is shorter than BAN_DURATION, so every ban is cut to it",
    )


def test_missing_referenced_files_are_warnings(tmp_path: Path) -> None:
    ignore = tmp_path / "ignore"
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    text = (
        f'IGNORE_FILE="{tmp_path}/missing.ignore"\nHISTORY_FILE="{tmp_path}/no/dir/history"\n'
        f'BLOCKED_FILE="{tmp_path}/blocked"\nKILL_RUN_CMD="{tmp_path}/nope $TARGET$"\n'
        f'UNBLOCK_RUN_CMD="{tool} $TARGET$"\nKILL_HOSTS_DENY="ALL: $TARGET$"\n'
        f'HOSTS_DENY_FILE="{tmp_path}/etc/hosts.deny"\n'
    )
    path = tmp_path / "p.conf"
    path.write_text(text)
    assert load_config(str(path)).warnings == (
        f"{path}:1: IGNORE_FILE: {tmp_path}/missing.ignore does not exist; nothing will be ignored",
        f"{path}:2: HISTORY_FILE: directory {tmp_path}/no/dir does not exist",
        f"{path}:7: HOSTS_DENY_FILE: {tmp_path}/etc does not exist",
        f"{path}:4: KILL_RUN_CMD: command {tmp_path}/nope does not exist or is not executable here",
    )
    ignore.write_text("127.0.0.1\n")
    path.write_text(f'IGNORE_FILE="{ignore}"\nKILL_RUN_CMD="logger $TARGET$"\n')
    assert load_config(str(path)).warnings == ()


# --- files -----------------------------------------------------------------------------------


def test_no_path_means_embedded_defaults() -> None:
    loaded = load_config(None)
    assert loaded.settings == Settings()
    assert loaded.path is None
    assert loaded.warnings == ()
    assert set(loaded.origins.values()) == {"default"}


def test_missing_or_unreadable_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(missing))
    assert str(caught.value) == (
        f"{missing}: cannot read the file: No such file or directory "
        "(expected a readable config file)"
    )
    with pytest.raises(ConfigErrors, match="cannot read the file"):
        load_config(str(tmp_path))


# --- robustness ------------------------------------------------------------------------------

_KEYISH = st.sampled_from([*sorted(KEYS), "TCP_PORT", "tcp_ports", "X", ""])
_CHARS = st.sampled_from([*"0123456789,-. smhdx\"'#=$/:\t\\\x00\x7fé", "permanent", "1h"])
_VALUE = st.lists(_CHARS, max_size=12).map("".join)
_LINE = st.one_of(
    st.tuples(_KEYISH, st.sampled_from(["=", " = ", "", " "]), _VALUE).map("".join),
    st.builds(lambda k, v: f'{k}="{v}"', _KEYISH, _VALUE),
    st.text(max_size=30),
)
_TEXT = st.lists(_LINE, max_size=8).map("\n".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_random_text_raises_only_config_errors(text: str) -> None:
    found = parse_config(text, "t.conf")
    if found.config is None:
        assert found.errors
        for error in found.errors:
            assert error.render().startswith("t.conf:")
    else:
        # What ``config check`` prints for it loads back to the same settings.
        text_again = render_effective(found.config.settings, found.config.origins)
        again = parse_config(text_again, "again.conf")
        assert again.config is not None
        assert again.config.settings == found.config.settings


@settings(max_examples=100, deadline=None)
@given(st.one_of(_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary()))
def test_load_config_on_random_files_raises_only_config_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "r.conf")
        with open(path, "wb") as stream:
            stream.write(data)
        try:
            loaded = load_config(path)
        except ConfigErrors as exc:
            errors = exc.errors
        else:
            errors = []
            assert loaded.path == path
        assert all(isinstance(e, ConfigError) for e in errors)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (os.mkfifo, "a FIFO (named pipe), not a regular file"),
        (lambda p: p.symlink_to(p.name), "a symlink loop (too many levels of symbolic links)"),
        (lambda p: p.symlink_to("/dev/zero"), "a character device, not a regular file"),
    ],
)
def test_a_config_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, make: Callable[[Path], None], what: str
) -> None:
    path = tmp_path / "p.conf"
    make(path)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}: cannot read the file: {what} (expected a readable config file)"
    )


def test_a_config_larger_than_its_cap_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "p.conf"
    with path.open("wb") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}: cannot read the file: larger than 1 MiB, the limit for a configuration "
        "file (expected a readable config file)"
    )


def test_an_ignore_file_that_is_a_symlink_loop_is_not_reported_missing(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    found = parse_config(f'IGNORE_FILE="{loop}"\n', "p.conf")
    assert found.config is not None
    notes = reference_warnings(found.config.settings, found.config.origins, "p.conf")
    assert not [note for note in notes if "does not exist" in note]


def test_the_loader_refuses_what_run_refuses_with_file_line_and_key(tmp_path: Path) -> None:
    """config check and run load the same way: an exposed endpoint is an error of the file."""
    path = tmp_path / "portsentinel.conf"
    path.write_text('SCAN_TRIGGER="0"\nMETRICS_LISTEN="0.0.0.0:9469"\n')
    found = diagnose_config(str(path))
    assert found.config is None
    [error] = found.errors
    assert error.render() == (
        f"{path}:2: METRICS_LISTEN: 0.0.0.0 is not a loopback address: metrics would be served "
        "to the network (expected 127.0.0.1:PORT or [::1]:PORT, or METRICS_ALLOW_REMOTE=1)"
    )
    path.write_text('METRICS_LISTEN="0.0.0.0:9469"\nMETRICS_ALLOW_REMOTE="1"\n')
    assert diagnose_config(str(path)).config is not None


def test_a_defaults_file_set_in_the_config_but_missing_is_a_warning(tmp_path: Path) -> None:
    """Set explicitly and missing, the modes silently became atcp,audp; the embedded default
    path (Debian's /etc/default/portsentry) missing is no warning: most hosts lack it."""
    path = tmp_path / "portsentinel.conf"
    path.write_text(f'DEFAULTS_FILE="{tmp_path}/nowhere"\n')
    found = diagnose_config(str(path))
    assert (
        f"{path}:1: DEFAULTS_FILE: {tmp_path}/nowhere does not exist; without --mode the "
        "modes are the defaults (atcp,audp)" in found.warnings
    )
    path.write_text('SCAN_TRIGGER="0"\n')
    assert not [w for w in diagnose_config(str(path)).warnings if "DEFAULTS_FILE" in w]


def test_kernel_hold_without_the_nftables_backend_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "portsentinel.conf"
    path.write_text('KERNEL_HOLD="1"\nBLOCK_BACKEND="iptables"\n')
    assert (f"{path}:1: KERNEL_HOLD: is 1 but not used: it needs BLOCK_BACKEND=nftables (not "
            "iptables)") in diagnose_config(str(path)).warnings  # fmt: skip
    path.write_text('KERNEL_HOLD="1"\n')
    assert not [w for w in diagnose_config(str(path)).warnings if "KERNEL_HOLD" in w]
