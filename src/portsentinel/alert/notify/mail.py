"""One notification mailed through MAIL_COMMAND (the local MTA, ``sendmail -t`` by default):
a fixed argv, the message on its standard input, run by block's ``Runner`` (timeout, the
whole process group killed)."""

from __future__ import annotations

from portsentinel.alert.notify.message import mail_message, text
from portsentinel.block.runner import CommandRunner, Runner


class Mailer:
    def __init__(
        self,
        to: tuple[str, ...],
        command: tuple[str, ...],
        timeout: float,
        runner: CommandRunner | None = None,
    ) -> None:
        self.to = to
        self.command = command
        self.timeout = timeout
        if runner is None:  # the administrator's MTA: without the service's capabilities
            runner = Runner(timeout=timeout, drop_capabilities=True)
        self._runner = runner

    def send(self, payload: dict[str, object], host: str) -> str | None:
        """Mail ``payload``; None when the MTA took it, else why not (printable, cut short)."""
        message = mail_message(payload, self.to, host)
        done = self._runner.run(self.command, input=message, timeout=self.timeout)
        return None if done.ok else text(done.describe())
