"""What the ban lifecycle stands on: backends built by name (each once), a stored ban turned
back into what a backend applies with the time it has left, keys, and PortSentry's words."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from portsentinel.block import BanSpec, HostsDenyBackend
from portsentinel.config.schema import Settings
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from portsentinel.respond.backends import (
    Backends,
    blocked_line,
    files_for,
    human,
    prefix_of_key,
    record_key,
    spec_of,
)
from portsentinel.store.records import BanRecord, BanState


def record(address: str, prefix: int, expires: float | None, **evidence: object) -> BanRecord:
    return BanRecord(1, address, prefix, 0.0, expires, BanState.ACTIVE, "SYN scan", None,
                     MappingProxyType(evidence), 1, None, None, False)  # fmt: skip


def test_a_stored_ban_comes_back_with_the_time_it_has_left() -> None:
    stored = record("198.18.0.2", 32, 100.0, port=79, proto="udp", mode="audp")
    assert spec_of(stored, 40.0) == BanSpec("198.18.0.2", 32, 79, Proto.UDP, Mode.AUDP, 60.0)
    assert spec_of(stored, 100.0) is None  # over
    permanent = record("fd00:5e::", 64, None, port="x", mode="bogus")
    spec = spec_of(permanent, 1e9)
    assert spec is not None
    assert (spec.timeout, spec.port, spec.mode) == (None, 0, None)


def test_keys_name_hosts_bare_and_prefixes_with_their_length() -> None:
    assert record_key(record("198.18.0.2", 32, None)) == "198.18.0.2"
    assert record_key(record("fd00:5e::", 64, None)) == "fd00:5e::/64"
    assert prefix_of_key("fd00:5e::/64") == 64
    assert prefix_of_key("198.18.0.2") is None


def test_the_blocked_lines_use_portsentrys_words() -> None:
    s = dataclasses.replace(Settings(), kill_route="/sbin/route add $TARGET$", kill_run_cmd="/x")
    spec = BanSpec.create("198.18.0.2", timeout=3600.0)
    assert blocked_line("nftables", spec, {}, s) == (
        "attackalert: Host 198.18.0.2 has been blocked via nftables for 1h"
    )
    assert blocked_line("hosts_deny", spec, {"line": "ALL: 198.18.0.2"}, s) == (
        'attackalert: Host 198.18.0.2 has been blocked via wrappers with string: "ALL: 198.18.0.2"'
    )
    assert "dropped route using command" in blocked_line("legacy", spec, {}, s)
    assert "External command run" in blocked_line("run_cmd", spec, {}, s)
    assert "not run" in blocked_line("run_cmd", spec, {"skipped": "IPv6"}, s)
    forever = BanSpec.create("198.18.0.2")
    assert blocked_line("iptables", forever, {}, s).endswith("permanently")
    assert [human(x) for x in (86400, 7200, 120, 61)] == ["1d", "2h", "2m", "61s"]


def test_backends_are_built_once_by_name_and_unknown_names_refused(tmp_path: object) -> None:
    s = dataclasses.replace(Settings(), hosts_deny_file=f"{tmp_path}/hosts.deny")
    backends = Backends(s)
    first = backends.get("hosts_deny")
    assert isinstance(first, HostsDenyBackend)
    assert backends.get("hosts_deny") is first
    assert dict(backends.built()) == {"hosts_deny": first}
    with pytest.raises(BackendError, match="unknown backend"):
        backends.get("carrier-pigeon")
    backends.reconfigure(s)
    assert dict(backends.built()) == {}


def test_the_history_file_gets_1_2s_lines_from_here_only_with_1_2s_words() -> None:
    base = Settings(history_file="/h", blocked_file="/b")
    assert files_for(base).history == "/h"
    assert files_for(dataclasses.replace(base, log_format="1.2")).history == "/h"
    two = files_for(dataclasses.replace(base, log_format="2.0"))
    assert (two.history, two.blocked_base) == ("", "/b")  # the loop writes 2.0's lines
