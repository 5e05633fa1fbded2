"""One POST of a notification as JSON; the worker decides whether to try again.

The opener ignores proxy variables and never follows a redirect: one could lead anywhere
(even ftp://), so a 3xx answer counts as a failure. urllib and http.client are imported only
here, when a webhook is configured (see the package's docstring).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portsentinel import __version__
from portsentinel.alert.notify.message import text

if TYPE_CHECKING:
    import urllib.request

MAX_REPLY = 64 * 1024  # bytes of a webhook answer read (and thrown away)


@dataclass(frozen=True)
class Failure:
    """Why a POST failed, and whether another attempt may do better (5xx, 429, no answer)."""

    why: str
    retry: bool


class Webhook:
    """WEBHOOK_URL: http or https only (urllib would open file:// too)."""

    def __init__(self, url: str, timeout: float) -> None:
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ValueError("WEBHOOK_URL must be an http or https URL")
        self.url = url
        self.timeout = timeout
        self._opener = _opener()

    @property
    def where(self) -> str:
        """The URL without its path, query or credentials (webhook URLs often hold a secret)."""
        parts = urllib.parse.urlsplit(self.url)
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    def post(self, payload: dict[str, object]) -> Failure | None:
        """POST ``payload`` once; None when the server took it (2xx)."""
        import urllib.error  # noqa: PLC0415 - only when a webhook is configured
        import urllib.request  # noqa: PLC0415
        from http.client import HTTPException  # noqa: PLC0415

        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload, separators=(",", ":")).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"portsentinel/{__version__}",
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                answer.read(MAX_REPLY)
        except urllib.error.HTTPError as exc:
            exc.close()
            return Failure(f"HTTP {exc.code}", retry=exc.code >= 500 or exc.code == 429)
        except (OSError, HTTPException) as exc:  # URLError and timeouts are OSErrors
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Failure(text(reason) or type(exc).__name__, retry=True)
        return None


def _opener() -> urllib.request.OpenerDirector:
    import urllib.request  # noqa: PLC0415 - only when a webhook is configured

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_args: object) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
