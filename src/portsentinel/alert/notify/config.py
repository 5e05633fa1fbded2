"""What the notifier needs from the settings, plus the knobs its tests turn."""

from __future__ import annotations

from dataclasses import dataclass, field

from portsentinel import paths
from portsentinel.config.endpoints import NotifyOn
from portsentinel.config.schema import Settings
from portsentinel.model import Action

ATTEMPTS = 3  # webhook attempts per notification
BACKOFF = 1.0  # seconds before the second attempt, doubled before each further one
WINDOW = 60.0  # NOTIFY_RATE is per this many seconds
QUEUE_SIZE = 256  # decisions waiting for the worker

_NOTIFIED = {
    NotifyOn.ALERT: frozenset({Action.ALERT, Action.BLOCK, Action.COMMAND}),
    NotifyOn.BLOCK: frozenset({Action.BLOCK, Action.COMMAND}),
}


def _mail_command() -> tuple[str, ...]:
    """The local MTA as MAIL_COMMAND's default names it (``paths.SENDMAIL``, read now)."""
    return (paths.SENDMAIL, "-t", "-oi")


@dataclass(frozen=True)
class NotifyConfig:
    """Off (``enabled`` false) unless a webhook URL or a mail address is given."""

    webhook_url: str = ""
    webhook_timeout: float = 5.0
    mail_to: tuple[str, ...] = ()
    mail_command: tuple[str, ...] = field(default_factory=_mail_command)
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

    @property
    def actions(self) -> frozenset[Action]:
        """The decisions' actions that notify (NOTIFY_ON)."""
        return _NOTIFIED[self.on]

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
