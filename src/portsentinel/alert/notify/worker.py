"""Notifications of first triggers: a JSON webhook and mail through the local MTA.

Off by default (WEBHOOK_URL and MAIL_TO empty). The detection loop must never wait for a
slow web server or MTA, so ``Notifier.submit`` only puts the decision in a bounded queue:
an overflow is counted and summarised, never dropped silently. One worker thread sends,
with a timeout per attempt, a bounded number of retries with backoff, and at most
NOTIFY_RATE notifications per minute; what the rate holds back is summarised once a minute
("N more alerts in the last minute").

A block's notification waits (up to ``ban_wait``) for the responder to say whether and how
the ban was applied, so the receiver learns the ban's target and end too.

Nothing from the network reaches a command line: the MTA gets a fixed argv and the message
on its standard input, and the message holds only validated values (addresses, port
numbers, kinds) plus printable text; a reverse-DNS name only when it is a plain host name.

The daemon imports this module even when nothing is configured, so the web and mail
libraries (urllib.request, http.client, ssl and email weigh some 7 MiB of resident memory)
are imported only by the code that sends, when a webhook or a mail address is configured.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import os
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portsentinel import __version__
from portsentinel.alert.events import event_dict, iso_time
from portsentinel.block.runner import CommandRunner, Runner
from portsentinel.config.outputs import NotifyOn
from portsentinel.config.schema import Settings
from portsentinel.model import Action, Decision, ScanKind
from portsentinel.ratelimit import Throttle
from portsentinel.store.records import BanRecord

if TYPE_CHECKING:
    import urllib.request

_clock = time.monotonic  # noqa: TID251 - the worker's own timers (deadlines, the rate window)
_wall = time.time  # noqa: TID251 - summaries carry the time they were written

ATTEMPTS = 3  # webhook attempts per notification
BACKOFF = 1.0  # seconds before the second attempt, doubled before each further one
WINDOW = 60.0  # NOTIFY_RATE is per this many seconds
QUEUE_SIZE = 256  # decisions waiting for the worker
MAX_WAITING = 256  # block notifications waiting for their ban's outcome
MAX_TEXT = 200  # free text (reasons, rules, MTA errors) is cut to this many characters
MAX_REPLY = 64 * 1024  # bytes of a webhook answer read (and thrown away)
LOG_LINES = 256  # log lines kept for the detection loop to print

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
_KINDS = frozenset(k.value for k in ScanKind)
_ACTIONS = frozenset(a.value for a in Action)
_NOTIFIED = {
    NotifyOn.ALERT: frozenset({Action.ALERT, Action.BLOCK, Action.COMMAND}),
    NotifyOn.BLOCK: frozenset({Action.BLOCK, Action.COMMAND}),
}


@dataclass(frozen=True)
class NotifyConfig:
    """What the notifier needs from the settings, plus the knobs tests turn."""

    webhook_url: str = ""
    webhook_timeout: float = 5.0
    mail_to: tuple[str, ...] = ()
    mail_command: tuple[str, ...] = ("/usr/sbin/sendmail", "-t", "-oi")
    mail_timeout: float = 30.0
    rate: int = 10
    on: NotifyOn = NotifyOn.ALERT
    host: str = ""  # the daemon host's name; empty: this machine's node name
    ban_wait: float = 0.0  # a block's notification waits this long for its ban; 0: never
    attempts: int = ATTEMPTS
    backoff: float = BACKOFF
    window: float = WINDOW
    queue_size: int = QUEUE_SIZE

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.mail_to)

    @classmethod
    def from_settings(cls, settings: Settings, *, await_bans: bool) -> NotifyConfig:
        """``await_bans``: a responder will report ban outcomes (false in a dry run)."""
        return cls(
            webhook_url=settings.webhook_url,
            webhook_timeout=settings.webhook_timeout,
            mail_to=settings.mail_to,
            mail_command=settings.mail_command,
            mail_timeout=settings.mail_timeout,
            rate=settings.notify_rate,
            on=settings.notify_on,
            ban_wait=settings.command_timeout + 5.0 if await_bans else 0.0,
        )


def host_name(name: str = "") -> str:
    """A host name fit for a subject line: ``name`` or this machine's, when plain."""
    name = name or os.uname().nodename
    return name if _HOSTNAME.fullmatch(name) else "unknown-host"


def ban_info(record: BanRecord, name: str | None = None) -> dict[str, object]:
    """The ``ban`` object of a notification; ``name`` (reverse DNS) only when plain."""
    info: dict[str, object] = {
        "target": record.target,
        "since": iso_time(record.created),
        "until": iso_time(record.expires) if record.expires is not None else None,
        "offence": record.offence,
        "reason": record.reason,
    }
    if name is not None and _HOSTNAME.fullmatch(name.rstrip(".")):
        info["name"] = name.rstrip(".")
    return info


def summary_text(held: int, dropped: int, window: float) -> str:
    """``N more alerts in the last minute`` (and the queue's losses, if any)."""
    span = "minute" if window == WINDOW else f"{window:g} s"
    parts = []
    if held:
        parts.append(f"{held} more alert{'s' if held != 1 else ''} in the last {span}")
    if dropped:
        parts.append(f"{dropped} alert{'s' if dropped != 1 else ''} lost: the queue was full")
    return "; ".join(parts)


# --- the mail message ---------------------------------------------------------------------------


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return "?"


def _network(value: object) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        return "?"


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _word(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "?"


def _text(value: object) -> str:
    """Printable text only, cut short: no header or line can be forged with it."""
    return "".join(c for c in str(value) if c.isprintable())[:MAX_TEXT]


def _event_lines(event: Mapping[str, object]) -> tuple[str, list[str]]:
    src, kind = _address(event.get("src")), _word(event.get("kind"), _KINDS)
    action = _word(event.get("action"), _ACTIONS)
    where = f"{_word(event.get('proto'), frozenset({'tcp', 'udp'}))}/{_number(event.get('port'))}"
    subject = f"{action} {src} ({kind} scan, {where})"
    lines = [
        f"Time: {_text(event.get('time'))}",
        f"Source: {src}",
        f"Destination: {_address(event.get('dst'))}",
        f"Port: {where}",
        f"Scan kind: {kind}",
        f"Action: {action}",
        f"Reason: {_text(event.get('reason'))}",
        f"Hits: {_number(event.get('hits'))}, ports seen: {_number(event.get('ports_seen'))}",
    ]
    if event.get("rule") is not None:
        lines.append(f"Rule: {_text(event.get('rule'))}")
    ban = event.get("ban")
    if isinstance(ban, Mapping):
        until = ban.get("until")
        lines.append(f"Ban: {_network(ban.get('target'))} until {_text(until or 'permanent')}")
        lines.append(f"Ban reason: {_text(ban.get('reason'))}")
        lines.append(f"Offence: {_number(ban.get('offence'))}")
        name = ban.get("name")
        if isinstance(name, str) and _HOSTNAME.fullmatch(name):
            lines.append(f"Name: {name}")
    return subject, lines


def mail_message(payload: Mapping[str, object], to: tuple[str, ...], host: str) -> str:
    """The message the MTA reads with ``-t``: To and Subject headers, a plain-text body."""
    if payload.get("type") == "summary":
        subject, lines = _text(payload.get("text")), [_text(payload.get("text"))]
        top = payload.get("sources")
        if isinstance(top, list):
            for entry in top:
                if isinstance(entry, Mapping):
                    lines.append(f"  {_address(entry.get('src'))}: {_number(entry.get('count'))}")
    else:
        subject, lines = _event_lines(payload)
    import email.message  # noqa: PLC0415 - only when mail is configured (see the docstring)
    import email.utils  # noqa: PLC0415

    msg = email.message.EmailMessage()
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"PortSentinel on {host}: {subject}"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join([f"Host: {host}", *lines]) + "\n")
    return msg.as_string()


# --- the channels -------------------------------------------------------------------------------


def _webhook_opener() -> urllib.request.OpenerDirector:
    """An opener that ignores proxy variables and never follows a redirect: one could lead
    anywhere (even ftp://), so a 3xx answer counts as a failure."""
    import urllib.request  # noqa: PLC0415 - only when a webhook is configured

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_args: object) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


@dataclass(frozen=True)
class _Failure:
    why: str
    retry: bool


def _where(url: str) -> str:
    """The URL without its path, query or credentials (webhook URLs often hold a secret)."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class Notifier:
    """The detection loop calls ``submit``, the responder ``ban_result``; a thread sends."""

    def __init__(self, config: NotifyConfig, *, runner: CommandRunner | None = None) -> None:
        """``runner`` runs MAIL_COMMAND (argv, timeout, the whole process group killed)."""
        scheme = urllib.parse.urlsplit(config.webhook_url).scheme.lower()
        if config.webhook_url and scheme not in ("http", "https"):
            raise ValueError("WEBHOOK_URL must be an http or https URL")  # urllib opens file://
        self.config = config
        self.host = host_name(config.host)
        self._wanted = _NOTIFIED[config.on]
        self._queue: queue.Queue[tuple[object, ...]] = queue.Queue(config.queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the overflow counters: several threads submit
        self._dropped = 0
        self._dropped_ban = 0
        self._dropped_seen = 0
        self._counts: dict[str, int] = dict.fromkeys(
            ("webhook_sent", "webhook_failed", "webhook_retries", "mail_sent", "mail_failed",
             "limited", "summaries", "unsent_at_stop"), 0,
        )  # fmt: skip
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._throttle = Throttle(config.rate, config.window)
        self._waiting: collections.OrderedDict[str, tuple[float, list[dict[str, object]]]]
        self._waiting = collections.OrderedDict()
        self._early: collections.OrderedDict[str, tuple[float, dict[str, object] | None]]
        self._early = collections.OrderedDict()
        self._runner = runner if runner is not None else Runner(timeout=config.mail_timeout)
        self._opener = _webhook_opener() if config.webhook_url else None
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)

    # --- other threads' side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, decision: Decision, wall: float) -> None:
        """A decision from the detection loop: only first triggers of the wanted actions."""
        if decision.first and decision.action in self._wanted:
            try:
                self._queue.put_nowait(("event", decision, wall))
            except queue.Full:
                with self._lock:
                    self._dropped += 1

    def ban_result(self, address: str, ban: Mapping[str, object] | None) -> None:
        """The responder's outcome for ``address`` (the decision's ``src``): ``ban_info(...)``
        when a ban was applied, None when nothing was."""
        try:
            self._queue.put_nowait(("ban", address, None if ban is None else dict(ban)))
        except queue.Full:
            with self._lock:
                self._dropped_ban += 1  # its event goes out after ban_wait, without the ban

    def lines(self) -> list[str]:
        """Log lines the worker wrote since the last call, for the detection loop to print."""
        out = []
        while self._lines:
            out.append(self._lines.popleft())
        return out

    def stats(self) -> dict[str, int]:
        out = dict(self._counts)
        out["dropped"] = self._dropped
        out["dropped_ban_results"] = self._dropped_ban
        out["queued"] = self._queue.qsize()
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (one attempt each, bounded by ``timeout``) and stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # wake the worker; a full queue wakes it anyway
            self._queue.put_nowait(("wake", None, None))
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = self._queue.qsize() + len(self._waiting)
        self._counts["unsent_at_stop"] = left
        if self._thread.is_alive() or left:
            self._log(f"adminalert: notifications: {left} not sent at shutdown")

    # --- the worker ---------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        self._lines.append(line)

    def _count(self, key: str) -> None:
        self._counts[key] += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = _clock()
                try:
                    item = self._queue.get(timeout=self._wait(now))
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item, _clock())
                self._due(_clock())
            self._finish()
        except Exception as exc:  # the worker must report, never die silently
            self._log(f"adminalert: ERROR: notifications stopped: {exc!r}")

    def _wait(self, now: float) -> float:
        deadlines = [next(iter(self._waiting.values()))[0]] if self._waiting else []
        if self._throttle.due is not None:
            deadlines.append(self._throttle.due)
        return max(0.0, min([now + 1.0, *deadlines]) - now)

    def _handle(self, item: tuple[object, ...], now: float) -> None:
        tag, key, value = item
        if tag == "event" and isinstance(key, Decision) and isinstance(value, float | int):
            self._event(key, value, now)
        elif tag == "ban" and isinstance(key, str):
            self._ban(key, value if isinstance(value, dict) else None, now)

    def _event(self, decision: Decision, wall: float, now: float) -> None:
        payload: dict[str, object] = {"type": "event", **event_dict(decision, wall)}
        payload.update(host=self.host, ban=None)
        if decision.action is Action.ALERT or self.config.ban_wait <= 0:
            self._deliver(payload, now)
            return
        early = self._early.pop(decision.src, None)
        if early is not None:
            payload["ban"] = early[1]
            self._deliver(payload, now)
            return
        entry = self._waiting.get(decision.src)
        if entry is None:
            if len(self._waiting) >= MAX_WAITING:
                self._release(self._waiting.popitem(last=False)[1][1], now)
            entry = self._waiting[decision.src] = (now + self.config.ban_wait, [])
        entry[1].append(payload)

    def _ban(self, address: str, ban: dict[str, object] | None, now: float) -> None:
        entry = self._waiting.pop(address, None)
        if entry is None:  # the outcome overtook its decision: keep it a while
            if len(self._early) >= MAX_WAITING:
                self._early.popitem(last=False)
            self._early[address] = (now + max(self.config.ban_wait, 1.0), ban)
            return
        for payload in entry[1]:
            payload["ban"] = ban
        self._release(entry[1], now)

    def _release(self, payloads: list[dict[str, object]], now: float) -> None:
        for payload in payloads:
            self._deliver(payload, now)

    def _due(self, now: float) -> None:
        while self._waiting:
            address, (deadline, payloads) = next(iter(self._waiting.items()))
            if deadline > now:
                break
            del self._waiting[address]
            self._release(payloads, now)
        while self._early and next(iter(self._early.values()))[0] <= now:
            self._early.popitem(last=False)
        if self._dropped != self._dropped_seen:
            self._throttle.schedule(now)
        due = self._throttle.due
        if due is not None and due <= now:
            self._summarise()

    def _finish(self) -> None:
        """Stopping: what is queued or waiting goes out now, then the last summary."""
        now = _clock()
        while True:
            try:
                self._handle(self._queue.get_nowait(), now)
            except queue.Empty:
                break
        while self._waiting:
            self._release(self._waiting.popitem(last=False)[1][1], now)
        if self._throttle.held or self._dropped != self._dropped_seen:
            self._summarise()

    def _deliver(self, payload: dict[str, object], now: float) -> None:
        if not self._throttle.allow(now, str(payload.get("src"))):
            self._count("limited")
            return
        self._send(payload)

    def _summarise(self) -> None:
        held, top = self._throttle.take()
        dropped = self._dropped - self._dropped_seen
        self._dropped_seen += dropped
        if not held and not dropped:
            return
        text = summary_text(held, dropped, self.config.window)
        self._count("summaries")
        self._log(f"adminalert: notifications: {text}")
        self._send(
            {
                "type": "summary",
                "time": iso_time(_wall()),
                "host": self.host,
                "text": text,
                "held": held,
                "dropped": dropped,
                "window": self.config.window,
                "sources": [{"src": src, "count": n} for src, n in top],
            }
        )

    def _send(self, payload: dict[str, object]) -> None:
        if self.config.webhook_url:
            self._post(payload)
        if self.config.mail_to:
            self._mail(payload)

    # --- webhook ----------------------------------------------------------------------------

    def _post(self, payload: dict[str, object]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        delay = self.config.backoff
        attempt = 0
        while True:
            attempt += 1
            failure = self._post_once(body)
            if failure is None:
                self._count("webhook_sent")
                return
            if attempt >= self.config.attempts or not failure.retry or self._stop.is_set():
                break
            self._count("webhook_retries")
            if self._stop.wait(delay):
                break
            delay *= 2
        self._count("webhook_failed")
        where = _where(self.config.webhook_url)
        self._log(
            f"adminalert: notifications: webhook {where} failed after {attempt} "
            f"attempt{'s' if attempt != 1 else ''}: {failure.why}"
        )

    def _post_once(self, body: bytes) -> _Failure | None:
        import urllib.error  # noqa: PLC0415 - only when a webhook is configured
        import urllib.request  # noqa: PLC0415
        from http.client import HTTPException  # noqa: PLC0415

        assert self._opener is not None  # built whenever webhook_url is set
        request = urllib.request.Request(
            self.config.webhook_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"portsentinel/{__version__}",
            },
        )
        try:
            with self._opener.open(request, timeout=self.config.webhook_timeout) as answer:
                answer.read(MAX_REPLY)
        except urllib.error.HTTPError as exc:
            exc.close()
            return _Failure(f"HTTP {exc.code}", retry=exc.code >= 500 or exc.code == 429)
        except (OSError, HTTPException) as exc:  # URLError and timeouts are OSErrors
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return _Failure(_text(reason) or type(exc).__name__, retry=True)
        return None

    # --- mail -------------------------------------------------------------------------------

    def _mail(self, payload: dict[str, object]) -> None:
        message = mail_message(payload, self.config.mail_to, self.host)
        done = self._runner.run(
            self.config.mail_command, input=message, timeout=self.config.mail_timeout
        )
        if done.ok:
            self._count("mail_sent")
            return
        self._count("mail_failed")
        to = ", ".join(self.config.mail_to)
        self._log(f"adminalert: notifications: mail to {to} failed: {_text(done.describe())}")
