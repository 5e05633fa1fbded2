"""What the notifier takes from the settings, and which settings it refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from portsentinel import paths
from portsentinel.alert.notify.config import NotifyConfig
from portsentinel.config.endpoints import NotifyOn
from portsentinel.config.schema import Settings, spec_for
from portsentinel.config.types import InvalidValueError
from portsentinel.model import Action


def test_off_by_default_and_settings_map_to_the_config() -> None:
    assert not NotifyConfig.from_settings(Settings(), await_bans=True).enabled
    settings = replace(
        Settings(),
        webhook_url="https://hooks.example.org/x",
        mail_to=("root",),
        notify_rate=3,
        notify_on=NotifyOn.BLOCK,
    )
    config = NotifyConfig.from_settings(settings, await_bans=True)
    assert config.enabled
    assert (config.rate, config.on, config.webhook_timeout) == (3, NotifyOn.BLOCK, 5.0)
    assert config.mail_command == (paths.SENDMAIL, "-t", "-oi")
    assert config.ban_wait == settings.command_timeout + 5.0
    assert NotifyConfig.from_settings(settings, await_bans=False).ban_wait == 0.0


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("WEBHOOK_URL", "file:///etc/passwd"),
        ("WEBHOOK_URL", "ftp://198.18.0.1/x"),
        ("WEBHOOK_URL", "http://host:99999/"),
        ("WEBHOOK_URL", "http://exa mple/"),
        ("MAIL_TO", "root, a@b;rm -rf /"),
        ("MAIL_TO", "-oQ/tmp"),
        ("MAIL_COMMAND", "/usr/sbin/sendmail 'unclosed"),
        ("NOTIFY_ON", "everything"),
        ("NOTIFY_RATE", "0"),
    ],
)
def test_bad_notification_settings_are_refused(key: str, raw: str) -> None:
    with pytest.raises(InvalidValueError):
        spec_for(key).parse(raw)


def test_notify_on_names_the_actions_that_notify() -> None:
    assert NotifyConfig().actions == {Action.ALERT, Action.BLOCK, Action.COMMAND}
    assert NotifyConfig(on=NotifyOn.BLOCK).actions == {Action.BLOCK, Action.COMMAND}


def test_the_default_mta_is_read_from_paths_when_a_config_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paths, "SENDMAIL", "/opt/mta/sendmail")
    assert NotifyConfig().mail_command == ("/opt/mta/sendmail", "-t", "-oi")
