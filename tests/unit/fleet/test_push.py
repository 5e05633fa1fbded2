from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

from portsentinel.fleet.credentials import Machine
from portsentinel.fleet.lapi import Lapi
from portsentinel.fleet.push import Pusher, backoff
from portsentinel.store.records import LiftedBy
from portsentinel.store.sqlite import Store

from .fleet_fakes import T0, ban, open_store


def _pusher(store: Store, delay: float = 300) -> Pusher:
    lapi = Lapi("http://127.0.0.1:9")  # never asked by scan
    return Pusher(store, lapi, host="a", delay=delay, cap=86400, batch=100, outbox_max=100,
                  log=lambda _line: None)  # fmt: skip


def test_strong_bans_go_at_once_weak_ones_after_the_window(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        weak = ban(store, "198.18.0.2")
        strong = ban(store, "198.18.0.3", kinds=("CONNECT",))
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        assert [i.ref for i in store.outbox_due(T0 + 1, 10)] == [f"ban:{strong.id}"]
        pusher.scan(T0 + 301)
        pusher.scan(T0 + 302)  # queued once
        refs = sorted(i.ref for i in store.outbox_due(T0 + 302, 10))
        assert refs == sorted([f"ban:{strong.id}", f"ban:{weak.id}"])


def test_lifted_before_the_window_is_withheld(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        weak = ban(store, "198.18.0.2")
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        store.lift(weak.id, T0 + 2, LiftedBy.UNBLOCK)
        pusher.scan(T0 + 400)
        assert store.outbox_due(T0 + 400, 10) == []
        assert store.fleet_ban_states([weak.id])[weak.id][0] == "withheld"


def test_a_pushed_ban_lifted_by_unblock_is_withdrawn_an_expired_one_not(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        one = ban(store, "198.18.0.2", kinds=("CONNECT",))
        two = ban(store, "198.18.0.3", kinds=("CONNECT",))
        pusher = _pusher(store)
        pusher.scan(T0 + 1)
        store.fleet_note_bans([(one.id, one.address, None, "pushed"),
                               (two.id, two.address, None, "pushed")], T0 + 2)  # fmt: skip
        store.outbox_done(i.id for i in store.outbox_due(T0 + 2, 10))
        store.lift(one.id, T0 + 3, LiftedBy.UNBLOCK)
        store.lift(two.id, T0 + 3, LiftedBy.EXPIRY)
        pusher.scan(T0 + 4)
        assert [(i.kind, i.address) for i in store.outbox_due(T0 + 4, 10)] == [
            ("unban", "198.18.0.2")
        ]
        states = store.fleet_ban_states([one.id, two.id])
        assert (states[one.id][0], states[two.id][0]) == ("withdrawn", "ended")


def test_a_pushed_ban_cut_short_as_a_decoy_is_withdrawn(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        cut = ban(store, "198.18.0.2", kinds=("CONNECT",), expires=T0 + 3600)
        kept = ban(store, "198.18.0.3", kinds=("CONNECT",), expires=T0 + 3600)
        lines: list[str] = []
        pusher = _pusher(store)
        pusher.log = lines.append
        pusher.scan(T0 + 1)
        store.fleet_note_bans([(cut.id, cut.address, None, "pushed"),
                               (kept.id, kept.address, None, "pushed")], T0 + 2)  # fmt: skip
        store.outbox_done(i.id for i in store.outbox_due(T0 + 2, 10))
        assert store.cut_ban(cut.id, T0 + 300, at=T0 + 3, detail={"group": 1}) is not None
        pusher.scan(T0 + 4)
        assert [(i.kind, i.address) for i in store.outbox_due(T0 + 4, 10)] == [
            ("unban", "198.18.0.2")]  # fmt: skip
        states = store.fleet_ban_states([cut.id, kept.id])
        assert (states[cut.id][0], states[kept.id][0]) == ("withdrawn", "pushed")
        assert any("cut short" in line for line in lines)
        pusher.scan(T0 + 5)  # once
        assert len(store.outbox_due(T0 + 5, 10)) == 1


def test_backoff_doubles_to_five_minutes() -> None:
    assert 0.8 <= backoff(0) <= 1.0
    assert 6.4 <= backoff(3) <= 8.0
    assert backoff(30) <= 300


class _LockedOnce(http.server.BaseHTTPRequestHandler):
    """A stand-in for LAPI 1.4.6 under concurrent writers, on loopback: the first POST of
    alerts stores their decisions and still answers 500 ("database is locked")."""

    posts: ClassVar[list[list[dict[str, Any]]]] = []
    decisions: ClassVar[list[dict[str, Any]]] = []

    def _answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/watchers/login":
            self._answer(200, {"token": "t", "expire": "2099-01-01T00:00:00Z"})
            return
        self.posts.append(body)
        for alert in body:
            self.decisions.extend(alert.get("decisions", []))
        if len(self.posts) == 1:
            self._answer(500, {"message": "database is locked"})
        else:
            self._answer(201, [str(len(self.posts))])

    def do_GET(self) -> None:
        ip = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("ip", [""])[0]
        self._answer(200, [d for d in self.decisions if d.get("value") == ip] or None)

    def log_message(self, *_args: object) -> None:
        return None


def test_a_push_lapi_stored_but_answered_500_is_not_sent_twice(tmp_path: Path) -> None:
    _LockedOnce.posts.clear()
    _LockedOnce.decisions.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LockedOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        lapi = Lapi(url, machine=Machine(url, "a", "secret"), api_key="key", timeout=5.0)
        with open_store(tmp_path) as store:
            strong = ban(store, "198.18.0.3", kinds=("CONNECT",))
            pusher = Pusher(store, lapi, host="a", delay=300, cap=86400, batch=100,
                            outbox_max=100, log=lambda _line: None)  # fmt: skip
            pusher.scan(T0 + 1)
            assert pusher.send(T0 + 1) == 0  # 500: retried later, asking first
            assert pusher.stats.failures == 1
            assert pusher.send(T0 + 1) == 0  # not due yet (back-off)
            later = T0 + 400
            pusher.send(later)
            assert store.outbox_due(later, 10) == []
            assert pusher.stats.duplicates_avoided == 1
            # LAPI has it: the ban counts as pushed (an unblock withdraws it)
            assert store.fleet_ban_states([strong.id])[strong.id][0] == "pushed"
    finally:
        server.shutdown()
        server.server_close()
    assert len(_LockedOnce.posts) == 1  # one POST: LAPI holds one decision
    assert [d["value"] for d in _LockedOnce.decisions] == ["198.18.0.3"]
