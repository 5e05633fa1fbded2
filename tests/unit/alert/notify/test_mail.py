"""One message through a real MTA stand-in (a script that stores its argv and its stdin):
delivered on standard input with a fixed argv, failures said in printable words."""

from __future__ import annotations

import time
from pathlib import Path

from portsentinel.alert.notify.mail import Mailer
from portsentinel.block.runner import Runner

from .notify_fakes import fake_mta, mailed

PAYLOAD: dict[str, object] = {"type": "summary", "text": "2 more alerts in the last minute"}


def test_the_message_goes_to_the_mta_on_stdin(tmp_path: Path) -> None:
    mailer = Mailer(("root", "ops@example.org"), fake_mta(tmp_path), 5.0)
    assert mailer.send(PAYLOAD, "gw") is None
    assert (tmp_path / "argv").read_text() == "-t\n-oi\n"  # the configured argv, nothing added
    message = mailed(tmp_path)
    assert message["To"] == "root, ops@example.org"
    assert message["Subject"] == "PortSentinel on gw: 2 more alerts in the last minute"


def test_an_mta_that_fails_says_why(tmp_path: Path) -> None:
    failing = fake_mta(tmp_path, body='printf "no route\\033[2J to relay\\n" >&2\nexit 75')
    assert Mailer(("root",), failing, 5.0).send(PAYLOAD, "gw") == (
        "exit 75; stderr: no route[2J to relay"  # the escape character is not printable
    )


def test_a_missing_mta_says_so(tmp_path: Path) -> None:
    why = Mailer(("root",), (str(tmp_path / "missing"),), 5.0).send(PAYLOAD, "gw")
    assert why is not None
    assert why.startswith("cannot run")


def test_a_hanging_mta_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    slow = fake_mta(tmp_path, body="sleep 5")
    started = time.monotonic()
    why = Mailer(("root",), slow, 0.3, Runner(timeout=10.0)).send(PAYLOAD, "gw")
    assert time.monotonic() - started < 3.0
    assert why == "timed out after 0.3s"
