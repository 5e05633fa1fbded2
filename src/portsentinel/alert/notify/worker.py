"""The notifier: the detection loop and the responder hand it work through a bounded queue;
one thread waits for ban outcomes, applies the rate, retries, summarises and sends."""

from __future__ import annotations

import collections
import contextlib
import math
import queue
import threading
import time
from collections.abc import Mapping

from portsentinel.alert.notify.config import NotifyConfig
from portsentinel.alert.notify.mail import Mailer
from portsentinel.alert.notify.message import event_payload, host_name, summary_payload
from portsentinel.alert.notify.webhook import Webhook
from portsentinel.block.runner import CommandRunner
from portsentinel.model import Action, Decision
from portsentinel.ratelimit import Throttle

_clock = time.monotonic  # noqa: TID251 - the worker's own timers (deadlines, the rate window)
_wall = time.time  # noqa: TID251 - summaries carry the time they were written

MAX_WAITING = 256  # block notifications waiting for their ban's outcome
LOG_LINES = 256  # log lines kept for the detection loop to print
ERROR_EVERY = 60.0  # seconds between two lines about failed notifications (all are counted)


class Notifier:
    """The detection loop calls ``submit``, the responder ``ban_result``; a thread sends."""

    def __init__(self, config: NotifyConfig, *, runner: CommandRunner | None = None) -> None:
        """``runner`` runs MAIL_COMMAND (argv, timeout, the whole process group killed)."""
        self.config = config
        self._webhook = (
            Webhook(config.webhook_url, config.webhook_timeout) if config.webhook_url else None
        )
        self._mailer = (
            Mailer(config.mail_to, config.mail_command, config.mail_timeout, runner)
            if config.mail_to
            else None
        )
        self.host = host_name(config.host)
        self._wanted = config.actions
        self._queue: queue.Queue[tuple[object, ...]] = queue.Queue(config.queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the overflow counters: several threads submit
        self._dropped = 0
        self._dropped_ban = 0
        self._dropped_seen = 0
        self._counts: dict[str, int] = dict.fromkeys(
            ("webhook_sent", "webhook_failed", "webhook_retries", "mail_sent", "mail_failed",
             "limited", "summaries", "unsent_at_stop", "errors"), 0,
        )  # fmt: skip
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._throttle = Throttle(config.rate, config.window)
        self._waiting: collections.OrderedDict[str, tuple[float, list[dict[str, object]]]]
        self._waiting = collections.OrderedDict()
        self._early: collections.OrderedDict[str, tuple[float, dict[str, object] | None]]
        self._early = collections.OrderedDict()
        self._error_said = -math.inf
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
        while not self._stop.is_set():
            try:
                now = _clock()
                try:
                    item = self._queue.get(timeout=self._wait(now))
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item, _clock())
                self._due(_clock())
            except Exception as exc:  # one notification lost, said; the worker goes on
                self._failed(exc)
        try:
            self._finish()
        except Exception as exc:
            self._failed(exc)

    def alive(self) -> bool:
        """False once the worker ended although no stop was asked (the daemon then exits)."""
        return self._thread.is_alive() or self._stop.is_set() or self._thread.ident is None

    def _failed(self, exc: Exception) -> None:
        self._counts["errors"] += 1
        now = _clock()
        if now - self._error_said >= ERROR_EVERY:
            self._error_said = now
            self._log(f"adminalert: ERROR: a notification failed and was dropped: {exc!r}")

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
        payload = event_payload(decision, wall, self.host)
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
        payload = summary_payload(
            held, dropped, self.config.window, top, host=self.host, wall=_wall()
        )
        self._count("summaries")
        self._log(f"adminalert: notifications: {payload['text']}")
        self._send(payload)

    def _send(self, payload: dict[str, object]) -> None:
        if self._webhook is not None:
            self._post(self._webhook, payload)
        if self._mailer is not None:
            self._mail(self._mailer, payload)

    def _post(self, webhook: Webhook, payload: dict[str, object]) -> None:
        """Up to ``attempts`` POSTs, waiting ``backoff`` (doubled each time) between them;
        only failures that another attempt may cure are retried, and none once stopping."""
        delay = self.config.backoff
        attempt = 0
        while True:
            attempt += 1
            failure = webhook.post(payload)
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
        self._log(
            f"adminalert: notifications: webhook {webhook.where} failed after {attempt} "
            f"attempt{'s' if attempt != 1 else ''}: {failure.why}"
        )

    def _mail(self, mailer: Mailer, payload: dict[str, object]) -> None:
        failure = mailer.send(payload, self.host)
        if failure is None:
            self._count("mail_sent")
            return
        self._count("mail_failed")
        to = ", ".join(mailer.to)
        self._log(f"adminalert: notifications: mail to {to} failed: {failure}")
