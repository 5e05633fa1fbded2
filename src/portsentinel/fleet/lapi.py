"""A small client of CrowdSec's Local API (1.4.6), standard library only, every request with a
timeout: the machine side (login, ``POST /v1/alerts``, filtered ``DELETE /v1/decisions``) and
the bouncer side (``GET /v1/decisions/stream``, ``GET /v1/decisions``).

Only the fleet link's thread and the CLI's ``unblock`` call it; the daemon's loop never does.
A failure is a ``LapiError`` that says whether the request may have taken effect anyway
(``ambiguous``: a 5xx such as 1.4.6's "database is locked", which still stores the decisions,
or a connection lost after the request went out): the sender then asks before sending again.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from portsentinel import __version__
from portsentinel.fleet.credentials import Machine

TOKEN_MARGIN = 60.0  # log in again this long before the token expires
# LAPI 1.4.6 refuses a login whose User-Agent is not NAME/VERSION (401, "bad user agent").
USER_AGENT = f"portsentinel/{__version__}"


class LapiError(Exception):
    """A request LAPI did not answer with success. ``status`` None: no HTTP answer."""

    def __init__(self, message: str, *, status: int | None = None, ambiguous: bool = False):
        super().__init__(message)
        self.status = status
        self.ambiguous = ambiguous


class Lapi:
    """One LAPI, as a machine (``machine``) and/or as a bouncer (``api_key``)."""

    def __init__(
        self,
        url: str,
        *,
        machine: Machine | None = None,
        api_key: str | None = None,
        ca_file: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.machine = machine
        self.api_key = api_key
        self.timeout = timeout
        self._context = (
            ssl.create_default_context(cafile=ca_file) if self.url.startswith("https") else None
        )
        self._token: str | None = None
        self._expires = 0.0
        self.requests = 0
        self.failures = 0

    # --- plumbing -----------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        heads = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            heads["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=heads)
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as rsp:
                text = rsp.read()
                return rsp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            self.failures += 1
            detail = _message(exc.read())
            raise LapiError(f"{method} {path.split('?', maxsplit=1)[0]}: HTTP {exc.code} {detail}",
                            status=exc.code, ambiguous=exc.code >= 500) from None  # fmt: skip
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failures += 1
            reason = getattr(exc, "reason", exc)
            # Refused or unreachable: nothing went out. A timeout or a reset: it may have.
            sent = not isinstance(reason, ConnectionRefusedError | socket.gaierror) and not (
                isinstance(reason, OSError) and reason.errno in (101, 113, 111)
            )
            raise LapiError(f"{method} {path.split('?', maxsplit=1)[0]}: {reason}",
                            ambiguous=sent and method != "GET") from None  # fmt: skip

    def _jwt(self) -> dict[str, str]:
        if self.machine is None:
            raise LapiError("no machine credentials (CROWDSEC_CREDENTIALS_FILE)")
        if self._token is None or time.time() > self._expires - TOKEN_MARGIN:
            self.login()
        return {"Authorization": f"Bearer {self._token}"}

    def _key(self) -> dict[str, str]:
        if self.api_key is None:
            raise LapiError("no bouncer key (CROWDSEC_BOUNCER_KEY_FILE)")
        return {"X-Api-Key": self.api_key}

    # --- the machine ----------------------------------------------------------------------------
    def login(self) -> None:
        m = self.machine
        if m is None:
            raise LapiError("no machine credentials (CROWDSEC_CREDENTIALS_FILE)")
        _status, answer = self._request(
            "POST", "/v1/watchers/login", {"machine_id": m.login, "password": m.password}
        )
        try:
            self._token = str(answer["token"])
            expire = datetime.datetime.fromisoformat(str(answer["expire"]).replace("Z", "+00:00"))
            self._expires = expire.timestamp()
        except (KeyError, TypeError, ValueError) as exc:
            raise LapiError(f"login: unexpected answer ({exc})") from None

    def post_alerts(self, alerts: list[dict[str, Any]]) -> list[str]:
        """The new alerts' ids. A 401 (token revoked, LAPI restarted) logs in once again."""
        try:
            _status, answer = self._request("POST", "/v1/alerts", alerts, self._jwt())
        except LapiError as exc:
            if exc.status != 401:
                raise
            self._token = None
            _status, answer = self._request("POST", "/v1/alerts", alerts, self._jwt())
        return [str(a) for a in answer] if isinstance(answer, list) else []

    def delete_decisions(self, **filters: str) -> int:
        """Delete the decisions matching ``filters`` (ip, origin, scenario ...); never
        unfiltered, which would delete every decision of the fleet. How many went."""
        if not filters.get("ip") and not filters.get("range"):
            raise ValueError("refusing an unfiltered DELETE /v1/decisions")
        query = urllib.parse.urlencode(filters)
        _status, answer = self._request("DELETE", f"/v1/decisions?{query}", None, self._jwt())
        try:
            return int(answer["nbDeleted"])
        except (KeyError, TypeError, ValueError):
            return 0

    def reports(self, ip: str, *, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        """The alerts without a decision whose source is ``ip`` and that started in the last
        ``since`` seconds (the sweep rule's question)."""
        return self.alerts_from(ip, since=since, undecided=True, limit=limit)

    def alerts_from(
        self, ip: str, *, since: float | None = None, undecided: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The alerts whose source is ``ip``, newest first, each with the ``machine_id`` that
        sent it. With the machine's token: 1.4.6 answers 401 to a bouncer key here, and its
        ``ip`` filter matches only alerts that carry a decision, so the source is asked by
        ``scope`` and ``value``; ``since`` compares with the alert's ``start_at``."""
        query = {"scope": "ip", "value": ip, "limit": str(limit)}
        if undecided:
            query["has_active_decision"] = "false"
        if since is not None:
            query["since"] = f"{max(1, int(since))}s"
        text = urllib.parse.urlencode(query)
        _status, answer = self._request("GET", f"/v1/alerts?{text}", None, self._jwt())
        return _list(answer)

    # --- the bouncer ----------------------------------------------------------------------------
    def stream(self, *, startup: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(new, deleted) decisions of scope Ip since this key's last pull; ``startup``: every
        active one as new (and nothing deleted)."""
        query = "scopes=ip" + ("&startup=true" if startup else "")
        _status, answer = self._request("GET", f"/v1/decisions/stream?{query}", None, self._key())
        if not isinstance(answer, dict):
            return [], []
        return _list(answer.get("new")), _list(answer.get("deleted"))

    def decisions(self, ip: str) -> list[dict[str, Any]]:
        """The active decisions on ``ip`` (1.4.6 answers null for none)."""
        query = urllib.parse.urlencode({"ip": ip})
        _status, answer = self._request("GET", f"/v1/decisions?{query}", None, self._key())
        return _list(answer)


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _message(raw: bytes) -> str:
    try:
        answer = json.loads(raw or b"null")
    except ValueError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(answer, dict) and "message" in answer:
        return str(answer["message"])[:200]
    return str(answer)[:200]
