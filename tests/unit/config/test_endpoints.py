"""Value types of the notification and metrics settings: each refuses, at load time, a value
that would be unsafe or useless once it reaches a URL, a mail header, an argv or a socket."""

from __future__ import annotations

import pytest

from portsentinel.config.endpoints import (
    NotifyOn,
    argv_command,
    listen_address,
    mail_to,
    notify_on,
    remote_listen,
    webhook_url,
)
from portsentinel.config.types import InvalidValueError, ValueType


@pytest.mark.parametrize(
    ("kind", "raw", "value", "text"),
    [
        (notify_on, " Block ", NotifyOn.BLOCK, "block"),
        (notify_on, "alert", NotifyOn.ALERT, "alert"),
        (webhook_url, " https://hooks.example.org:8443/x?y=1 ",
         "https://hooks.example.org:8443/x?y=1", "https://hooks.example.org:8443/x?y=1"),
        (webhook_url, "", "", ""),
        (mail_to, "root, ops@example.org,root", ("root", "ops@example.org"),
         "root, ops@example.org"),
        (mail_to, "", (), ""),
        (argv_command, "/usr/sbin/sendmail -t -oi", ("/usr/sbin/sendmail", "-t", "-oi"),
         "/usr/sbin/sendmail -t -oi"),
        (argv_command, "'/opt/my mta' -t", ("/opt/my mta", "-t"), "'/opt/my mta' -t"),
        (listen_address, "9469", ("127.0.0.1", 9469), "127.0.0.1:9469"),
        (listen_address, "localhost:9469", ("127.0.0.1", 9469), "127.0.0.1:9469"),
        (listen_address, "[::1]:9469", ("::1", 9469), "[::1]:9469"),
        (listen_address, "0.0.0.0:1", ("0.0.0.0", 1), "0.0.0.0:1"),
        (listen_address, " ", None, ""),
    ],
)  # fmt: skip
def test_values_parse_and_render_back(
    kind: ValueType[object], raw: str, value: object, text: str
) -> None:
    assert kind.parse(raw) == value
    assert kind.render(value) == text
    assert kind.parse(text) == value


@pytest.mark.parametrize(
    ("kind", "raw", "why"),
    [
        (notify_on, "everything", "is not block or alert"),
        (webhook_url, "file:///etc/passwd", "file scheme"),
        (webhook_url, "198.18.0.1/hook", "no scheme"),
        (webhook_url, "http://host:99999/", "port is not a number"),
        (webhook_url, "http://exa mple/", "contains spaces"),
        (webhook_url, "https:///path", "names no host"),
        (mail_to, "root, a@b;rm -rf /", "is not a plain mail address"),
        (mail_to, "-oQ/tmp", "is not a plain mail address"),
        (argv_command, "/usr/sbin/sendmail 'unclosed", "does not split"),
        (argv_command, "  ", "no command"),
        (argv_command, """mta "it's" """, "holds a quote character"),
        (listen_address, "example.org:9469", "is not an IP address"),
        (listen_address, "127.0.0.1:0", "is not a port number"),
        (listen_address, "127.0.0.1:http", "is not a port number"),
    ],
)
def test_bad_values_are_refused_with_the_reason(
    kind: ValueType[object], raw: str, why: str
) -> None:
    with pytest.raises(InvalidValueError, match=why):
        kind.parse(raw)


def test_text_types_keep_their_empty_value_and_others_fall_back_to_the_default() -> None:
    assert webhook_url.text  # WEBHOOK_URL="" means no webhook
    assert [k.text for k in (mail_to, argv_command, notify_on, listen_address)] == [False] * 4


@pytest.mark.parametrize(
    ("host", "allow", "refusal"),
    [
        ("127.0.0.1", False, None),
        ("::1", False, None),
        ("::ffff:127.0.0.1", False, None),
        ("198.18.0.1", False, "198.18.0.1 is not a loopback address: metrics would be served "
                              "to the network"),
        ("::", False, ":: is not a loopback address: metrics would be served to the network"),
        ("0.0.0.0", True, None),
    ],
)  # fmt: skip
def test_a_remote_endpoint_is_refused_unless_allowed(
    host: str, allow: bool, refusal: str | None
) -> None:
    assert remote_listen(host, allow_remote=allow) == refusal
