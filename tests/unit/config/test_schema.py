"""The declarations: one per setting, complete, and typed defaults that round-trip."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from portsentinel import paths
from portsentinel.config.declaration import SettingSpec
from portsentinel.config.ignore import MAX_IGNORE_BYTES
from portsentinel.config.modes import MAX_DEFAULTS_BYTES
from portsentinel.config.schema import KEYS, SETTINGS, Settings, spec_for
from portsentinel.config.types import Backend, BlockLevel, InvalidValueError
from portsentinel.daemon.scrape import CONNECTION_TIMEOUT, MAX_CONNECTIONS
from portsentinel.files.regular import size_text
from portsentinel.host.resolvconf import MAX_RESOLV_CONF_BYTES

PORTSENTRY_12_KEYS = {
    "TCP_PORTS", "UDP_PORTS", "ADVANCED_PORTS_TCP", "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP", "ADVANCED_EXCLUDE_UDP", "IGNORE_FILE", "HISTORY_FILE",
    "BLOCKED_FILE", "RESOLVE_HOST", "BLOCK_TCP", "BLOCK_UDP", "KILL_ROUTE",
    "KILL_HOSTS_DENY", "KILL_RUN_CMD", "KILL_RUN_CMD_FIRST", "SCAN_TRIGGER", "PORT_BANNER",
}  # fmt: skip


def test_every_field_is_declared_once_with_its_lower_case_key() -> None:
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [s.attr for s in SETTINGS]
    assert len(KEYS) == len(SETTINGS)
    assert all(s.key == s.attr.upper() for s in SETTINGS)


def test_every_portsentry_12_key_is_known_and_marked() -> None:
    assert PORTSENTRY_12_KEYS <= KEYS
    for key in PORTSENTRY_12_KEYS:
        assert spec_for(key).origin == "portsentry-1.2"
    assert spec_for("BLOCK_BACKEND").origin == "portsentinel"


def test_specs_have_help_unit_and_a_parsable_default() -> None:
    defaults = Settings()
    for spec in SETTINGS:
        assert spec.help, spec.key
        assert "\n" not in spec.help, spec.key
        assert spec.unit, spec.key
        value = getattr(defaults, spec.attr)
        assert spec.parse(spec.render(value)) == value, spec.key


def test_values_are_typed_not_raw_strings() -> None:
    defaults = Settings()
    for spec in SETTINGS:
        value = getattr(defaults, spec.attr)
        assert (type(value) is str) == spec.parse.text, spec.key


def test_embedded_defaults() -> None:
    s = Settings()
    assert {32772, 54320} <= s.tcp_ports
    assert 80 not in s.tcp_ports
    assert s.udp_ports >= {31337, 32770, 54321}
    assert s.advanced_ports_tcp == 1024
    assert s.advanced_exclude_tcp == frozenset({113, 139})
    assert s.advanced_exclude_udp == frozenset({520, 138, 137, 67})
    assert (s.block_tcp, s.block_udp) == (BlockLevel.BLOCK, BlockLevel.BLOCK)
    assert s.block_backend is Backend.NFTABLES
    assert (s.ban_duration, s.ban_max_duration) == (3600.0, 7 * 86400.0)
    assert s.ban_repeat_factor == 2.0
    assert (s.scan_window, s.scan_trigger) == (0.0, 0)
    assert (s.max_tracked_sources, s.max_ports_per_source) == (65536, 64)
    assert s.ignore_file == ""


# The host paths as shipped: what the docs and ``config defaults`` print.
SHIPPED_HOST_DEFAULTS = {
    "DEFAULTS_FILE": "/etc/default/portsentry",
    "HOSTS_DENY_FILE": "/etc/hosts.deny",
    "RESOLV_CONF": "/etc/resolv.conf",
    "RESOLVED_CONF": "/run/systemd/resolve/resolv.conf",
    "MAIL_COMMAND": "/usr/sbin/sendmail -t -oi",
}


def test_host_defaults_follow_paths_and_document_the_shipped_path() -> None:
    s = Settings()
    assert s.defaults_file == paths.DEFAULTS_FILE  # the test's own, see tests/conftest.py
    assert s.hosts_deny_file == paths.HOSTS_DENY
    assert s.resolv_conf == paths.RESOLV_CONF
    assert s.resolved_conf == paths.RESOLVED_CONF
    assert s.mail_command == (paths.SENDMAIL, "-t", "-oi")
    followers = {spec.key: spec.default for spec in SETTINGS if spec.host_default is not None}
    assert followers == SHIPPED_HOST_DEFAULTS


def test_settings_are_frozen_and_spec_for_is_exact() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.scan_trigger = 3  # type: ignore[misc]
    with pytest.raises(KeyError):
        spec_for("tcp_ports")


# --- every parser answers any text with a value or the project's own error -----------------
# Text that reaches odd corners of the parsers: URL and address pieces, Unicode digits that
# str.isdigit() accepts and int() refuses ("²"), macros, durations, modes, control characters.
_PIECES = st.sampled_from(
    ["http://", "https://", "[", "]", "fd00::1", "127.0.0.1", ":", "/", "²", "\u0663",
     "\uff11", "9", "0", "-", "+", ".", "e", "1e999", "nan", "inf", "$TARGET$", "$PORT$", " ",
     "\t", "%", "@", "s", "m", "h", "d", "permanent", "atcp", ",", "'", '"', "\\", "\x00"]
)  # fmt: skip
_ANY_TEXT = st.one_of(st.text(), st.lists(_PIECES, max_size=12).map("".join))


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.key)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_ANY_TEXT)
@example(raw="http://[fd00::1/hook")  # urlsplit's ValueError once escaped WEBHOOK_URL
@example(raw="127.0.0.1:9²")  # int() refused what isdigit() let through in METRICS_LISTEN
def test_every_parser_answers_any_text_with_a_value_or_a_config_error(
    spec: SettingSpec, raw: str
) -> None:
    """A bad value is a config error naming file, line and key, never a traceback: in
    ``config check``, at start-up, and on reload (where a traceback ended the daemon)."""
    try:
        spec.parse(raw)
    except InvalidValueError:
        return
    if spec.lint is not None:
        spec.lint(raw)  # asked only of values that parsed, as the loader does


def test_help_quotes_the_caps_the_code_applies() -> None:
    """The caps live with the code that applies them; the help texts (hence the docs and the
    man page) say them in words, and must not drift."""
    assert f"at most {size_text(MAX_IGNORE_BYTES)}," in spec_for("IGNORE_FILE").help
    assert f"at most {size_text(MAX_DEFAULTS_BYTES)}" in spec_for("DEFAULTS_FILE").help
    assert f"at most {size_text(MAX_RESOLV_CONF_BYTES)};" in spec_for("RESOLV_CONF").help
    metrics = spec_for("METRICS_LISTEN").help
    assert f"At most {MAX_CONNECTIONS} connections" in metrics
    assert f"closed {CONNECTION_TIMEOUT:g} s after" in metrics
