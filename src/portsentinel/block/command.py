"""PortSentry's own commands: KILL_ROUTE (the ``legacy`` backend), KILL_RUN_CMD and the new
UNBLOCK_RUN_CMD, with the macros ``$TARGET$``, ``$PORT$`` and ``$MODE$``.

PortSentry pasted the attacker's address into a string and gave it to ``system()``. Here no
value ever becomes shell syntax, and no value can add, remove or change an argument:

* The values are validated first: ``$TARGET$`` is an IP address (or ``net/len`` for a prefix
  ban) parsed by ``ipaddress`` and written out again, ``$PORT$`` a decimal number 0-65535,
  ``$MODE$`` one of a fixed list of names. Each consists only of ``[0-9A-Za-z:./]``.
* **Argv path** (the usual case): the configured string is split into words with
  ``shlex.split`` *first*; the macros are then replaced inside each word. A value lands inside
  one argument and stays there. The result runs without a shell.
* **Shell path**: a string that needs a shell (a pipe, ``;``, ``&&``, a redirection, a
  backtick or ``$(...)``, a variable, a glob, a leading ``VAR=value``: see ``needs_shell``)
  runs as ``/bin/sh -c SCRIPT portsentinel TARGET PORT MODE``. In SCRIPT each macro is
  replaced by a quoted positional parameter (``"${1}"``, ``"${2}"``, ``"${3}"``; inside single
  quotes the quotes are closed around it), so the shell receives the values as data, after it
  has parsed the script: they are never parsed themselves.

Substitution order is PortSentry's: ``$TARGET$``, then ``$PORT$``, then ``$MODE$``. Unlike
PortSentry 1.2, the exit status counts: a command that fails, times out or cannot start is
logged as a failure with its (truncated) output, and ``block`` raises BackendError. A command
written for IPv4 gets IPv6 targets only when ``ipv6_targets`` allows it; otherwise it is
skipped with a logged reason and the detail says so.

UNBLOCK_RUN_CMD is the command as configured when the ban ends, fed with the values recorded
in the detail (re-validated); a command text is never read back from the store.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
from dataclasses import dataclass

from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
)
from portsentinel.block.runner import CommandRunner, RunResult, truncate
from portsentinel.errors import BackendError
from portsentinel.model import Mode

log = logging.getLogger(__name__)

MACROS = ("$TARGET$", "$PORT$", "$MODE$")  # PortSentry's substitution order
MODE_MANUAL = "manual"  # $MODE$ of a ban that no scan mode decided (``portsentinel block``)
MODE_NAMES = frozenset({mode.value for mode in Mode} | {MODE_MANUAL})
DEFAULT_TIMEOUT = 30.0
SHELL = "/bin/sh"
SHELL_NAME = "portsentinel"  # $0 of the shell script, shown in its error messages

# Characters that mean something to the shell outside quotes and nothing to shlex (which
# handles quotes and backslashes itself); looked for once the macros are taken out.
_SHELL_CHARS = frozenset("|&;<>()$`*?[]~\n")
_LEADING_ASSIGNMENT = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*=")
_SAFE_VALUE = re.compile(r"[0-9A-Za-z:./]+")
_POSITIONAL = {"$TARGET$": "1", "$PORT$": "2", "$MODE$": "3"}


@dataclass(frozen=True, slots=True)
class MacroValues:
    """The three macro values, each validated; build with ``macro_values``."""

    target: str
    port: str
    mode: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.target, self.port, self.mode)


def validate_target(text: str) -> str:
    """An IP address or network re-rendered by ``ipaddress``; ValueError for anything else."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    rendered = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    if not _SAFE_VALUE.fullmatch(rendered):  # pragma: no cover - ipaddress never does this
        raise ValueError(f"{rendered!r} is not a plain address")
    return rendered


def validate_port(port: object) -> str:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{port!r} is not a port number")
    return str(port)


def validate_mode(mode: Mode | str | None) -> str:
    name = MODE_MANUAL if mode is None else str(mode)
    if name not in MODE_NAMES:
        raise ValueError(f"{name!r} is not a mode name")
    return name


# PortSentry 2.0's $MODE$ names its two modes (LOG_FORMAT 2.0: 2.0's words in commands too).
MODE_2_0 = {
    Mode.TCP.value: "connect", Mode.UDP.value: "connect", Mode.STCP.value: "stealth",
    Mode.SUDP.value: "stealth", Mode.ATCP.value: "stealth", Mode.AUDP.value: "stealth",
}  # fmt: skip


def macro_values(ban: BanSpec, *, portsentry2: bool = False) -> MacroValues:
    """The values for one ban, each checked again here, where they meet a command line;
    ``portsentry2``: $MODE$ in 2.0's words (stealth, connect)."""
    mode = validate_mode(ban.mode)
    if portsentry2:
        mode = MODE_2_0.get(mode, mode)
    return MacroValues(validate_target(ban.key), validate_port(ban.port), mode)


def substitute(text: str, values: MacroValues) -> str:
    """Replace every macro in ``text``, in PortSentry's order."""
    for macro, value in zip(MACROS, values.as_tuple(), strict=True):
        text = text.replace(macro, value)
    return text


def needs_shell(template: str) -> bool:
    """Does the string use shell syntax that an argv cannot express?

    Quotes are followed as the shell would: inside single quotes nothing is special, inside
    double quotes only ``$``, the backtick and the backslash are; outside, a backslash escapes
    the next character (shlex reads that the same way).
    """
    bare = template
    for macro in MACROS:
        bare = bare.replace(macro, "")
    if _LEADING_ASSIGNMENT.match(bare):
        return True
    quote: str | None = None
    word_start = True
    i = 0
    while i < len(bare):
        char = bare[i]
        if char == "\\" and quote == '"':
            return True  # shlex and sh disagree on some of these (\\$): let sh decide
        if char == "\\" and quote is None:
            i += 2
            word_start = False
            continue
        if quote is None:
            if char in _SHELL_CHARS or (char == "#" and word_start):
                return True
            if char in "'\"":
                quote = char
        elif char == quote:
            quote = None
        elif quote == '"' and char in "$`":
            return True
        word_start = quote is None and char.isspace()
        i += 1
    return False


def shell_script(template: str) -> str:
    """The template with each macro turned into a quoted positional parameter.

    Outside quotes a macro becomes ``"${1}"``; inside double quotes ``${1}`` (already quoted);
    inside single quotes ``'"${1}"'`` (close, quoted expansion, reopen), so the value shows up
    where PortSentry's textual substitution would have put it.
    """
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(template):
        macro = next((m for m in MACROS if template.startswith(m, i)), None)
        if macro is not None:
            ref = "${" + _POSITIONAL[macro] + "}"
            out.append({None: f'"{ref}"', '"': ref, "'": f"'\"{ref}\"'"}[quote])
            i += len(macro)
            continue
        char = template[i]
        if char == "\\" and quote != "'":
            out.append(template[i : i + 2])  # an escaped character, whatever it is
            i += 2
            continue
        if quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        out.append(char)
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CommandTemplate:
    """A configured command line, parsed once; ``argv`` renders it for given values."""

    text: str
    shell: bool
    words: tuple[str, ...]  # argv path: the words, macros still in them
    script: str  # shell path: the script with positional parameters

    @classmethod
    def parse(cls, text: str) -> CommandTemplate:
        """ValueError for an empty string or one ``shlex`` cannot split."""
        if not text.strip():
            raise ValueError("empty command")
        if needs_shell(text):
            return cls(text, True, (), shell_script(text))
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            raise ValueError(f"cannot split {text!r}: {exc}") from None
        return cls(text, False, words, "")

    def argv(self, values: MacroValues) -> list[str]:
        if self.shell:
            return [SHELL, "-c", self.script, SHELL_NAME, *values.as_tuple()]
        return [substitute(word, values) for word in self.words]


class CommandBackend(BackendBase):
    """Runs a configured command per ban (and optionally another when the ban ends).

    ``name`` is ``run_cmd`` for KILL_RUN_CMD/UNBLOCK_RUN_CMD and ``legacy`` for KILL_ROUTE,
    which has no undo (PortSentry's blocks never ended): its bans stay until removed by hand.
    """

    def __init__(
        self,
        runner: CommandRunner,
        block_command: str,
        unblock_command: str = "",
        *,
        name: str = "run_cmd",
        timeout: float = DEFAULT_TIMEOUT,
        ipv6_targets: bool = False,
        portsentry2: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self._portsentry2 = portsentry2  # $MODE$ in PortSentry 2.0's words
        try:
            self._block = CommandTemplate.parse(block_command)
            self._unblock = CommandTemplate.parse(unblock_command) if unblock_command else None
        except ValueError as exc:
            raise BackendError(f"{name}: {exc}") from None
        self._runner = runner
        self._timeout = timeout
        self._ipv6_targets = ipv6_targets

    def block(self, ban: BanSpec) -> ActionDetail:
        detail = ban_fields(ban, self.name)
        if ban.version == 6 and not self._ipv6_targets:
            reason = "IPv6 target and the command is not marked as IPv6-ready"
            log.info("%s: skipped for %s: %s", self.name, ban.key, reason)
            detail["skipped"] = reason
            return detail
        values = macro_values(ban, portsentry2=self._portsentry2)
        result = self._execute(self._block, values, "block")
        detail.update(via_shell=self._block.shell, seconds=round(result.seconds, 3))
        return detail

    def unblock(self, detail: ActionDetail) -> None:
        if detail.get("skipped"):
            return
        ban = detail_ban(detail, self.name)
        if self._unblock is None:
            log.info("%s: no unblock command; %s stays as the command left it", self.name, ban.key)
            return
        self._execute(self._unblock, macro_values(ban, portsentry2=self._portsentry2), "unblock")

    def check(self) -> CheckResult:
        """A command leaves nothing this side can inspect."""
        return CheckResult(True)

    def _execute(self, template: CommandTemplate, values: MacroValues, what: str) -> RunResult:
        result = self._runner.run(template.argv(values), timeout=self._timeout)
        if not result.ok:
            raise self._fail(f"{what} command for {values.target} failed: {result.describe()}")
        log.info(
            "%s: %s command for %s succeeded in %.2fs%s",
            self.name,
            what,
            values.target,
            result.seconds,
            f"; output: {truncate(result.stdout)}" if result.stdout.strip() else "",
        )
        self._ok()
        return result
