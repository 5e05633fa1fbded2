"""The ban lifecycle on a real SQLite store, with an in-memory backend standing in for the
kernel (the real backends are exercised end to end in tests/e2e/test_block_*.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from portsentinel.block import BanSpec, CheckResult
from portsentinel.block.base import ActionDetail, ban_fields
from portsentinel.block.nftables import ban_detail
from portsentinel.config.schema import Settings
from portsentinel.config.types import Backend as BackendName
from portsentinel.detect.ban_terms import BanTerms
from portsentinel.detect.budget import SHORT_BAN
from portsentinel.errors import BackendError
from portsentinel.host.resolver import Resolver
from portsentinel.model import Mode, Proto
from portsentinel.respond.backends import Backends, spec_of, terms_of
from portsentinel.respond.bans import BanManager, BanRequest
from portsentinel.respond.names import Names
from portsentinel.store.portsentry_files import PortSentryFiles
from portsentinel.store.records import ActionState, BanState, LiftedBy
from portsentinel.store.sqlite import Store

HOUR = 3600.0


class Kernel:
    """What a kernel-side backend holds: ban key -> seconds left."""

    def __init__(self) -> None:
        self.bans: dict[str, float | None] = {}
        self.calls: list[tuple[str, str]] = []
        self.batches: list[tuple[str, int]] = []  # (backend, bans) of each block_many


class MemoryBackend:
    def __init__(self, name: str, kernel: Kernel, fail: bool = False) -> None:
        self.name = name
        self.kernel = kernel
        self.fail = fail
        self.degraded: str | None = None

    def start(self) -> None:
        pass

    def block(self, ban: BanSpec) -> ActionDetail:
        self.kernel.calls.append((self.name, f"block {ban.key}"))
        if self.fail:
            raise BackendError(f"{self.name}: refused")
        self.kernel.bans[ban.key] = ban.timeout
        detail = ban_fields(ban, self.name)
        if self.name == "hosts_deny":
            detail["line"] = f"ALL: {ban.key} : DENY"
        return detail

    def block_many(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        self.kernel.batches.append((self.name, len(bans)))
        return [self.block(b) for b in bans]

    def renew(self, bans: Sequence[BanSpec]) -> None:
        for ban in bans:
            self.kernel.calls.append((self.name, f"renew {ban.key}"))
            self.kernel.bans[ban.key] = ban.timeout

    def unblock(self, detail: ActionDetail) -> None:
        width = 128 if ":" in str(detail["address"]) else 32
        key = (
            str(detail["address"])
            if detail["prefix"] == width
            else f"{detail['address']}/{detail['prefix']}"
        )
        self.kernel.calls.append((self.name, f"unblock {key}"))
        self.kernel.bans.pop(key, None)

    def check(self) -> CheckResult:
        return CheckResult(True, (), dict(self.kernel.bans))

    def repair(self, bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        return self.block_many(bans)

    def stop(self) -> None:
        pass


class FakeBackends(Backends):
    def __init__(self, settings: Settings, failing: frozenset[str] = frozenset()) -> None:
        super().__init__(settings)
        self.kernel = Kernel()
        self.failing = failing

    def _build(self, name: str) -> MemoryBackend:
        return MemoryBackend(name, self.kernel, name in self.failing)


def settings(**kw: object) -> Settings:
    base = Settings()
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def request(address: str = "198.18.0.2", level: int = 1) -> BanRequest:
    return BanRequest(address, 79, Proto.TCP, Mode.ATCP, level, "SYN scan", "scan_trigger",
                      {"ports": ["tcp/79"]})  # fmt: skip


def manager(
    store: Store, s: Settings, failing: frozenset[str] = frozenset(), **kw: object
) -> tuple[BanManager, FakeBackends, list[str]]:
    lines: list[str] = []
    backends = FakeBackends(s, failing)
    return BanManager(s, store, backends, log=lines.append, **kw), backends, lines  # type: ignore[arg-type]


def test_ban_is_recorded_applied_and_logged_in_portsentrys_words(
    store: Store, tmp_path: Path
) -> None:
    s = settings(kill_hosts_deny="ALL: $TARGET$ : DENY", ban_duration=HOUR)
    files = PortSentryFiles(str(tmp_path / "history"), "")
    bans, backends, lines = manager(store, s, files=files)
    record = bans.ban(request(), 1000.0)
    assert record is not None
    assert record.state is BanState.ACTIVE
    assert record.expires == 1000.0 + HOUR
    assert [a.backend for a in store.actions(record.id)] == ["hosts_deny", "nftables"]
    assert backends.kernel.bans == {"198.18.0.2": HOUR}
    wrappers = 'with string: "ALL: 198.18.0.2 : DENY"'
    assert lines[0] == f"attackalert: Host 198.18.0.2 has been blocked via wrappers {wrappers}"
    assert lines[1] == "attackalert: Host 198.18.0.2 has been blocked via nftables for 1h"
    assert "Host: 198.18.0.2/198.18.0.2 Port: 79 TCP Blocked" in (tmp_path / "history").read_text()
    assert bans.ban(request(), 1001.0) is None  # already banned: nothing twice


def test_repeat_offenders_get_doubled_bans_up_to_the_cap(store: Store) -> None:
    s = settings(ban_duration=HOUR, ban_repeat_factor=2.0, ban_max_duration=3 * HOUR)
    bans, _backends, _lines = manager(store, s)
    lengths = []
    now = 0.0
    for _ in range(4):
        record = bans.ban(request(), now)
        assert record is not None
        lengths.append(
            (record.expires or 0) - now,
        )
        now += 10 * HOUR
        bans.expire(now)
    assert lengths == [HOUR, 2 * HOUR, 3 * HOUR, 3 * HOUR]


def test_a_provisional_ban_is_short_and_never_doubled(store: Store) -> None:
    """Admitted while the ban budget was pressed (a flood of sources), without a handshake:
    the flood's chosen addresses get no long bans, whatever their history."""
    s = settings(ban_duration=HOUR, ban_repeat_factor=2.0)
    bans, backends, lines = manager(store, s)
    first = bans.ban(request(), 0.0)  # an ordinary ban: the address has a history now
    assert first is not None
    bans.expire(2 * HOUR)
    record = bans.ban(replace(request(), provisional=True), 2 * HOUR)
    assert record is not None
    assert record.expires == 2 * HOUR + SHORT_BAN  # not 2 h for a repeat offender
    assert backends.kernel.bans == {"198.18.0.2": int(SHORT_BAN)}
    assert lines[-1] == "attackalert: Host 198.18.0.2 has been blocked via nftables for 10m"


def test_permanent_bans(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=None))
    record = bans.ban(request(), 0.0)
    assert record is not None
    assert record.expires is None
    assert backends.kernel.bans == {"198.18.0.2": None}
    assert bans.expire(10**9) == []


def test_block_level_2_runs_only_the_command(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(kill_run_cmd="/bin/true $TARGET$"))
    record = bans.ban(request(level=2), 0.0)
    assert record is not None
    assert [a.backend for a in store.actions(record.id)] == ["run_cmd"]
    assert backends.kernel.calls == [("run_cmd", "block 198.18.0.2")]


def test_a_failing_backend_is_recorded_and_the_others_go_on(store: Store) -> None:
    s = settings(kill_hosts_deny="ALL: $TARGET$ : DENY")
    bans, _backends, lines = manager(store, s, frozenset({"hosts_deny"}))
    record = bans.ban(request(), 0.0)
    assert record is not None
    states = {a.backend: a.state for a in store.actions(record.id)}
    assert states == {"hosts_deny": ActionState.FAILED, "nftables": ActionState.APPLIED}
    assert any("hosts_deny could not block" in line for line in lines)


def test_when_every_action_fails_the_ban_fails_and_says_so(store: Store) -> None:
    bans, _backends, lines = manager(store, settings(), frozenset({"nftables"}))
    assert bans.ban(request(), 0.0) is None
    assert store.ban_for("198.18.0.2") is None
    assert "attackalert: ERROR: Could not block host 198.18.0.2/198.18.0.2!!" in lines


def test_lift_undoes_newest_first_and_expiry_lifts(store: Store) -> None:
    s = settings(kill_hosts_deny="ALL: $TARGET$ : DENY", ban_duration=60.0)
    bans, backends, _lines = manager(store, s)
    record = bans.ban(request(), 0.0)
    assert record is not None
    backends.kernel.calls.clear()
    assert [r.address for r in bans.expire(30.0)] == []
    assert [r.address for r in bans.expire(61.0)] == ["198.18.0.2"]
    assert backends.kernel.calls == [
        ("nftables", "unblock 198.18.0.2"),
        ("hosts_deny", "unblock 198.18.0.2"),
    ]
    ended = store.ban(record.id)
    assert ended is not None
    assert ended.lifted_by == LiftedBy.EXPIRY


def test_the_terms_follow_the_settings_and_a_reload(store: Store) -> None:
    s = settings(ban_duration=HOUR, ban_repeat_factor=3.0, ban_max_duration=None,
                 ban_repeat_window=10 * HOUR, ipv6_prefix_after=2, ipv6_prefix_len=56)  # fmt: skip
    assert terms_of(s) == BanTerms(HOUR, 3.0, None, 10 * HOUR, 2, 56)
    bans, _backends, _lines = manager(store, settings())
    bans.reconfigure(s)
    assert bans.terms == terms_of(s)
    assert bans.length("198.18.0.2", 0.0) == (HOUR, 1)


def test_ipv6_bans_widen_to_the_prefix_but_never_over_a_protected_address(store: Store) -> None:
    s = settings(ipv6_prefix_after=3, ipv6_prefix_len=64, ban_duration=HOUR)
    protected_net = ipaddress.ip_network("fd00:99::/64")
    bans, backends, _lines = manager(store, s, protected=lambda net: net.overlaps(protected_net))
    for host in ("fd00:5e::a", "fd00:5e::b"):
        assert bans.ban(request(host), 0.0) is not None
    third = bans.ban(request("fd00:5e::c"), 0.0)
    assert third is not None
    assert (third.address, third.prefix) == ("fd00:5e::", 64)
    assert set(backends.kernel.bans) == {"fd00:5e::/64"}  # the host bans were replaced
    assert bans.ban(request("fd00:5e::d"), 1.0) is None  # covered by the prefix ban
    for host in ("fd00:99::a", "fd00:99::b", "fd00:99::c"):
        record = bans.ban(request(host), 0.0)
        assert record is not None
        assert record.prefix == 128  # this /64 holds a protected address


def test_without_a_protection_check_ipv6_never_widens(store: Store) -> None:
    bans, _backends, _lines = manager(store, settings(ipv6_prefix_after=1))
    record = bans.ban(request("fd00:5e::a"), 0.0)
    assert record is not None
    assert record.prefix == 128


def test_native_backend_name_follows_block_backend(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(block_backend=BackendName.ROUTE))
    assert bans.ban(request(), 0.0) is not None
    assert backends.kernel.calls == [("route", "block 198.18.0.2")]


def test_many_bans_take_one_backend_call_each_and_skip_the_banned(store: Store) -> None:
    s = settings(kill_hosts_deny="ALL: $TARGET$ : DENY", ban_duration=HOUR)
    bans, backends, lines = manager(store, s)
    assert bans.ban(request("198.18.0.9"), 0.0) is not None
    backends.kernel.batches.clear()
    lines.clear()
    wanted = [request(f"198.19.0.{n}") for n in range(1, 201)]
    records = bans.ban_many([*wanted, request("198.18.0.9"), request("198.19.0.1")], 10.0)
    assert [r.address for r in records[:200] if r is not None] == [
        f"198.19.0.{n}" for n in range(1, 201)
    ]
    assert records[200:] == [None, None]  # banned already; twice in the batch
    assert all(r is not None and r.state is BanState.ACTIVE for r in records[:200])
    assert sorted(backends.kernel.batches) == [("hosts_deny", 200), ("nftables", 200)]
    assert len(store.active_bans(11.0)) == 201
    assert sum("has been blocked via nftables" in line for line in lines) == 200


def test_an_element_the_loop_sent_is_recorded_and_lengthened_not_added_again(
    store: Store,
) -> None:
    s = settings(ban_duration=HOUR, ban_repeat_factor=2.0, ban_repeat_window=100 * HOUR)
    bans, backends, _lines = manager(store, s)
    sent = dataclasses.replace(request("198.18.0.2"), in_kernel=True, kernel_timeout=3600)
    first = bans.ban(sent, 0.0)
    assert first is not None
    assert first.expires == HOUR
    assert not any(call[0] == "nftables" for call in backends.kernel.calls)  # already there
    actions = store.actions(first.id)
    assert [(a.backend, a.state) for a in actions] == [("nftables", ActionState.APPLIED)]
    # Held in the ban's own row (schema 7), read back as the detail the backend would write.
    spec = spec_of(first, 0.0)
    assert spec is not None
    assert actions[0].detail == ban_detail(spec)
    assert store._conn.execute("SELECT count(*) FROM ban_actions").fetchone() == (0,)
    assert bans.unblock("198.18.0.2", 10.0) is not None
    assert ("nftables", "unblock 198.18.0.2") in backends.kernel.calls
    undone = store.actions(first.id)  # moved to an action row, its detail kept
    assert [(a.backend, a.state, a.updated) for a in undone] == [
        ("nftables", ActionState.UNDONE, 10.0)
    ]
    assert undone[0].detail == ban_detail(spec)
    # A repeat offender: the loop sent a first offence's timeout; the worker makes it longer.
    again = bans.ban(sent, 20.0)
    assert again is not None
    assert again.offence == 2
    assert again.expires == 20.0 + 2 * HOUR
    assert backends.kernel.calls[-1] == ("nftables", "renew 198.18.0.2")
    assert backends.kernel.bans["198.18.0.2"] == 2 * HOUR


def test_an_element_sent_again_for_a_live_ban_gets_the_bans_own_time_back(store: Store) -> None:
    bans, backends, _lines = manager(store, settings(ban_duration=HOUR))
    manual = dataclasses.replace(request("198.18.0.2"), manual=True, duration=10 * HOUR)
    assert bans.ban(manual, 0.0) is not None
    # Before the detector heard of the manual ban, a probe made the loop send a first offence's
    # element (a newer kernel then shortens the element's timeout to it).
    backends.kernel.bans["198.18.0.2"] = HOUR
    sent = dataclasses.replace(request("198.18.0.2"), in_kernel=True, kernel_timeout=3600)
    assert bans.ban(sent, 100.0) is None  # banned already
    assert backends.kernel.bans["198.18.0.2"] == 10 * HOUR - 100.0


def test_with_names_the_lines_go_beside_the_ban_and_a_lift_follows_them(
    store: Store, tmp_path: Path
) -> None:
    """RESOLVE_HOST: the ban is applied and logged with the address at once; its lines wait
    for the name in ``Names`` (here one that never comes), and a lift's removal after them."""
    answer = threading.Event()

    def silent(address: str) -> str:
        answer.wait(60)
        return "late.example"

    names = Names(Resolver(lookup=silent), lambda _line: None, wait=60.0)
    files = PortSentryFiles(str(tmp_path / "history"), str(tmp_path / "blocked"))
    s = settings(ban_duration=60.0, resolve_host=True)
    bans, backends, lines = manager(store, s, files=files, names=names)
    record = bans.ban(request(), 0.0)
    assert record is not None
    assert backends.kernel.bans == {"198.18.0.2": 60.0}
    assert lines == ["attackalert: Host 198.18.0.2 has been blocked via nftables for 1m"]
    assert not (tmp_path / "history").exists()  # waiting for the name
    assert [r.address for r in bans.expire(61.0)] == ["198.18.0.2"]
    names.close()  # the stop: what waits is written with the address
    answer.set()
    assert "Host: 198.18.0.2/198.18.0.2 Port: 79" in (tmp_path / "history").read_text()
    assert (tmp_path / "blocked.atcp").read_text() == ""  # lifted: its line removed after


def test_a_retried_batch_runs_no_command_again_that_may_have_run(store: Store) -> None:
    """The store refused a step half-way (its outcome of KILL_RUN_CMD was not recorded): the
    retry finishes the ban without running the command a second time."""
    s = settings(ban_duration=HOUR, kill_run_cmd="/usr/local/bin/block $TARGET$")
    bans, backends, lines = manager(store, s)
    req = request("198.18.0.7")
    store.begin_ban("198.18.0.7", None, created=0.0, expires=HOUR, reason="SYN scan", rule=None,
                    evidence={"plan": ["nftables", "run_cmd"], "port": 79, "proto": "tcp",
                              "mode": "atcp"}, offence=1)  # fmt: skip
    [record] = bans.ban_many([req], 1.0, resume=True)
    assert record is not None
    assert record.state is BanState.ACTIVE
    assert [c for c in backends.kernel.calls if c[0] == "run_cmd"] == []
    assert "198.18.0.7" in backends.kernel.bans  # the idempotent one ran again
    states = {a.backend: a.state for a in store.actions(record.id)}
    assert states == {"nftables": ActionState.APPLIED, "run_cmd": ActionState.UNCERTAIN}
    assert any("may or may not have run" in line for line in lines)


def test_a_dry_run_records_the_ban_with_no_backend_but_its_own(store: Store) -> None:
    """run --dry-run: the ban the settings would apply is recorded, under the dry_run backend
    alone (hosts.deny, nftables and the command are not run), and said as a would-be ban."""
    s = settings(
        kill_hosts_deny="ALL: $TARGET$ : DENY", kill_run_cmd="/bin/true", ban_duration=HOUR
    )
    bans, backends, lines = manager(store, s, dry_run=True)
    record = bans.ban(request(), 1000.0)
    assert record is not None
    assert record.state is BanState.ACTIVE
    assert [a.backend for a in store.actions(record.id)] == ["dry_run"]
    assert {name for name, _ in backends.kernel.calls} == {"dry_run"}
    assert lines == ["attackalert: Host 198.18.0.2 would be blocked (dry run: nothing applied)"]
    assert bans.plan(0) == []  # BLOCK_x=0: not even a would-be ban
    assert bans.plan(2) == ["dry_run"]


class Killed(BaseException):
    """``kill -9`` at this point: nothing after it runs, nothing is rolled back that was
    committed (a BaseException: no step catches it)."""


def commits(store: Store) -> list[str]:
    """The transactions the store's connection commits from now on."""
    done: list[str] = []
    store._conn.set_trace_callback(lambda sql: done.append(sql) if sql == "COMMIT" else None)
    return done


def test_loop_sent_bans_with_nothing_else_to_do_are_recorded_active_in_one_transaction(
    store: Store,
) -> None:
    bans, backends, lines = manager(store, settings(ban_duration=HOUR))
    sent = [dataclasses.replace(request(f"198.18.1.{n}"), in_kernel=True, kernel_timeout=3600)
            for n in range(1, 101)]  # fmt: skip
    done = commits(store)
    records = bans.ban_many(sent, 0.0)
    assert len(done) == 1  # questions, ban rows (active) and action rows together
    assert all(r is not None and r.state is BanState.ACTIVE for r in records)
    assert backends.kernel.calls == []  # the elements are in the kernel already
    assert len(store.active_bans(1.0)) == 100
    assert all(r.state is BanState.ACTIVE for r in store.active_bans(1.0))
    first = records[0]
    assert first is not None
    assert [(a.backend, a.state) for a in store.actions(first.id)] == [
        ("nftables", ActionState.APPLIED)
    ]
    assert sum("198.18.1.7 has been blocked via nftables for 1h" in line for line in lines) == 1


def test_a_kill_after_the_loops_element_leaves_the_rest_of_the_plan_to_the_restart(
    store: Store, tmp_path: Path
) -> None:
    """Debian's plan (nftables, hosts.deny): the loop's element is recorded with the pending
    ban; a kill while hosts.deny is written leaves it pending, and start-up finishes it."""
    s = settings(kill_hosts_deny="ALL: $TARGET$ : DENY", ban_duration=HOUR)
    bans, backends, _lines = manager(store, s)
    sent = dataclasses.replace(request("198.18.0.2"), in_kernel=True, kernel_timeout=3600)

    def killed(_bans: Sequence[BanSpec]) -> list[ActionDetail | BackendError]:
        raise Killed

    hosts_deny = backends.get("hosts_deny")
    hosts_deny.block_many = killed  # type: ignore[method-assign, assignment]
    with pytest.raises(Killed):
        bans.ban_many([sent], 0.0)
    (pending,) = store.active_bans(1.0)
    assert pending.state is BanState.PENDING
    assert [(a.backend, a.state) for a in store.actions(pending.id)] == [
        ("nftables", ActionState.APPLIED)
    ]
    restarted, again, _ = manager(store, s)
    (restored,) = restarted.restore(2.0)
    assert restored.state is BanState.ACTIVE
    assert {a.backend: a.state for a in store.actions(restored.id)} == {
        "nftables": ActionState.APPLIED, "hosts_deny": ActionState.APPLIED,
    }  # fmt: skip
    assert again.kernel.bans == {"198.18.0.2": HOUR - 2.0}


def test_a_kill_before_the_last_step_loses_no_ban_and_no_commands_outcome(
    store: Store,
) -> None:
    """Outcomes of the idempotent backends wait for the next transaction (a kill before it:
    the pending ban is applied again at start); a command's is committed as soon as it ran,
    so a kill right after it does not make it ``uncertain``."""
    s = settings(kill_run_cmd="/bin/true $TARGET$", ban_duration=HOUR)
    bans, backends, lines = manager(store, s)

    def log(line: str) -> None:
        if "External command run" in line:
            raise Killed
        lines.append(line)

    bans.log = log
    with pytest.raises(Killed):
        bans.ban_many([request("198.18.0.2"), request("198.18.0.3")], 0.0)
    assert backends.kernel.bans == {"198.18.0.2": HOUR, "198.18.0.3": HOUR}
    live = store.active_bans(1.0)
    assert [r.state for r in live] == [BanState.PENDING, BanState.PENDING]
    assert {a.backend: a.state for a in store.actions(live[0].id)} == {
        "nftables": ActionState.APPLIED, "run_cmd": ActionState.APPLIED,
    }  # fmt: skip
    restarted, again, restart_lines = manager(store, s)
    restored = restarted.restore(2.0)
    assert [r.state for r in restored] == [BanState.ACTIVE, BanState.ACTIVE]
    assert store.uncertain() == []
    assert not any("may or may not have run" in line for line in restart_lines)
    assert again.kernel.bans == {"198.18.0.2": HOUR - 2.0, "198.18.0.3": HOUR - 2.0}
    assert not any(name == "run_cmd" for name, _ in again.kernel.calls)  # not run again
