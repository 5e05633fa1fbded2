"""The manual: ``portsentinel(8)``, ``portsentinel.conf(5)`` and ``docs/configuration.md``.

All three are rendered from what the program itself knows, the command-line parser it is
given and the setting declarations, so the documentation cannot describe a verb, option or
setting the code does not have. This module never builds the parser (the command line is
above it): ``scripts/gen_docs.py`` builds cli's parser, passes it here and writes the files
into the repository at build time, the man pages as package data that ``portsentinel
install`` copies; a test keeps the committed copies equal to a fresh rendering. Output is
deterministic: no dates, no terminal widths.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from portsentinel import __version__, paths
from portsentinel.config.commands import quote, render_defaults
from portsentinel.config.declaration import SettingSpec
from portsentinel.config.schema import SETTINGS
from portsentinel.system import service_files
from portsentinel.system.manual_text import (
    COMPATIBILITY,
    EXIT_STATUS,
    IGNORE_FILE,
    MAN8_DESCRIPTION,
    METRICS,
    PORTSENTRY2_WORDS,
    PORTSENTRY_FLAGS,
    SIGNALS,
    SYNTAX,
)

PROG = "portsentinel"
ORIGIN_TITLES = {
    "portsentry-1.2": "Settings from PortSentry 1.2",
    "portsentry-2.0": "Settings from PortSentry 2.0",
    "portsentinel": "PortSentinel's own settings",
}


@dataclass(frozen=True, slots=True)
class Option:
    """One argument of a verb, as a reader sees it: ``--for DURATION``, ``ADDR...``."""

    flags: tuple[str, ...]  # empty for a positional argument
    metavar: str  # "" for a switch
    repeat: bool
    required: bool
    help: str

    @property
    def positional(self) -> bool:
        return not self.flags

    @property
    def names(self) -> str:
        more = "..." if self.repeat else ""
        if self.positional:
            return f"{self.metavar}{more}"
        value = f" {self.metavar}{more}" if self.metavar else ""
        return ", ".join(self.flags) + value


@dataclass(frozen=True, slots=True)
class Verb:
    """One verb (``config check`` counts as one), its one-line help, description and options."""

    name: str
    summary: str
    description: str
    options: tuple[Option, ...]

    @property
    def synopsis(self) -> str:
        words = [PROG, self.name]
        for option in (*self.flagged, *self.positionals):
            words.append(option.names if option.required else f"[{option.names}]")
        return " ".join(words)

    @property
    def flagged(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if not o.positional)

    @property
    def positionals(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.positional)


# --- walking the parser ---------------------------------------------------------------------


def walk_verbs(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[Verb]:
    """Every leaf verb of ``parser`` in the order they were added; nested groups are flattened
    (``config`` -> ``config check``, ``config defaults``)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{prefix}{name}"
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                yield from walk_verbs(sub, full + " ")
                continue
            summary = summaries.get(name, "")
            yield Verb(full, summary, sub.description or summary, tuple(_options(sub)))


def _options(parser: argparse.ArgumentParser) -> Iterator[Option]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        if action.option_strings and action.nargs == 0:
            metavar = ""
        repeat = action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)
        required = action.required and action.nargs not in ("*", "?")
        flags = tuple(action.option_strings)
        yield Option(flags, metavar, repeat, required, _expand(action))


def _expand(action: argparse.Action) -> str:
    """The help text with argparse's ``%(default)s``-style fields filled in."""
    text = action.help or ""
    if "%" not in text:
        return text
    fields = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    fields["prog"] = PROG
    return text % fields


MAN_DIR = "src/portsentinel/system/man"  # the shipped man pages, in the repository


def generated_files(
    parser: argparse.ArgumentParser, portsentry2: argparse.ArgumentParser | None = None
) -> dict[str, str]:
    """Every file ``scripts/gen_docs.py`` writes, by path in the repository, for the whole
    command line ``parser`` (and PortSentry 2.0's, ``portsentry2``)."""
    return {
        "docs/configuration.md": render_configuration_md(),
        f"{MAN_DIR}/portsentinel.8": render_man8(parser, portsentry2),
        f"{MAN_DIR}/portsentinel.conf.5": render_conf5(),
        "packaging/portsentinel.conf": render_defaults(),
        "packaging/portsentinel.service": service_files.unit_text(),
        "packaging/portsentinel.logrotate": service_files.LOGROTATE,
    }


# --- roff -----------------------------------------------------------------------------------

_OPTION_DASH = re.compile(r"(?<![\w-])-|(?<=-)-")


def roff(text: str) -> str:
    """Prose for a roff line: backslashes escaped, option dashes as ``\\-`` (so ``--all``
    and ``-atcp`` copy and paste as ASCII), and no line may start with a control character."""
    text = text.replace("\\", "\\e")
    text = _OPTION_DASH.sub(r"\\-", text)
    return _guard(text)


def roff_code(text: str) -> str:
    """Literal text (keys, values, paths, commands): every dash is a minus sign, and long
    comma lists may break after a comma instead of running off the page."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace(",", ",\\:")
    return _guard(text)


def _guard(text: str) -> str:
    lines = text.split("\n")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in lines)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _th(name: str, section: int, title: str) -> str:
    return f'.TH {name.upper()} {section} "" "{PROG} {__version__}" "{title}"'


def _paragraphs(texts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for text in texts:
        out += [".PP", roff(text)]
    return out


def _tagged(tag: str, body: str) -> list[str]:
    return [".TP", tag, body]


# --- portsentinel(8) ------------------------------------------------------------------------


def _files() -> tuple[tuple[str, str], ...]:
    """The FILES section of portsentinel(8): the paths of ``paths`` (as shipped when
    ``scripts/gen_docs.py`` runs)."""
    return (
        (paths.CONFIG_FILE, "The configuration; see portsentinel.conf(5)."),
        (
            paths.DEFAULTS_FILE,
            "Debian's TCP_MODE and UDP_MODE: the modes run without --mode (DEFAULTS_FILE).",
        ),
        (
            f"{paths.STATE_DIR}/",
            f"The state directory (--state-dir): {paths.STORE_NAME} (bans, events, allow list), "
            f"{paths.LOCK_NAME} (one daemon per directory).",
        ),
        (
            f"{paths.RUN_DIR}/{paths.SOCKET_NAME}",
            f"The control socket of the running daemon (DIR/{paths.SOCKET_NAME} with "
            "--state-dir DIR).",
        ),
        (
            f"{paths.UNIT_DIR}/{service_files.UNIT_NAME}",
            "The systemd unit written by portsentinel install.",
        ),
        (
            f"{paths.LOGROTATE_DIR}/portsentinel",
            "Rotation of the history, blocked and event files.",
        ),
    )


def render_man8(
    parser: argparse.ArgumentParser, portsentry2: argparse.ArgumentParser | None = None
) -> str:
    """``portsentinel(8)``: every verb with its options, PortSentry's invocations (2.0's
    options from ``portsentry2``), exit status, files and signals."""
    verbs = list(walk_verbs(parser))
    lines = [
        f'.\\" Generated by scripts/gen_docs.py from {PROG} {__version__}: do not edit.',
        _th(PROG, 8, "System Administration"),
        ".SH NAME",
        f"{PROG} \\- port\\-scan detection and active response (a modern PortSentry)",
        ".SH SYNOPSIS",
        f".B {PROG}",
        ".I VERB",
        ".RI [ options ]",
        ".br",
        f".B {PROG}",
        ".RB [ \\-tcp | \\-stcp | \\-atcp ]",
        ".RB [ \\-udp | \\-sudp | \\-audp ]",
        ".RI [ options ]",
        ".br",
        f".B {PROG}",
        ".RB [ \\-\\-stealth | \\-\\-connect ]",
        ".RI [ options ]",
        ".SH DESCRIPTION",
        *_paragraphs(MAN8_DESCRIPTION),
        ".SH VERBS",
        ".PP",
        "Verbs: " + roff(", ".join(v.name for v in verbs)) + ".",
    ]
    for verb in verbs:
        lines += _man8_verb(verb)
    lines += ['.SH "PORTSENTRY INVOCATION"', *_paragraphs(PORTSENTRY_FLAGS)]
    if portsentry2 is not None:
        lines += [".PP", roff(_sentence(_capital(portsentry2.description or "")))]
        for option in _options(portsentry2):
            if option.help:
                lines += _tagged(_styled(option), roff(_sentence(option.help)))
        lines += _paragraphs(PORTSENTRY2_WORDS)
    lines += [".SH METRICS", *_paragraphs(METRICS)]
    lines += ['.SH "EXIT STATUS"']
    for code, text in EXIT_STATUS:
        lines += _tagged(f".B {code}", roff(text))
    lines += [".SH FILES"]
    for path, text in _files():
        lines += _tagged(f".I {roff_code(path)}", roff(text))
    lines += [".SH SIGNALS"]
    for names, text in SIGNALS:
        lines += _tagged(f".B {roff(names)}", roff(text))
    lines += [
        '.SH "SEE ALSO"',
        ".BR portsentinel.conf (5),",
        ".BR nft (8),",
        ".BR systemctl (1),",
        ".BR fail2ban (1),",
        ".BR portsentry (8)",
    ]
    return "\n".join(lines) + "\n"


def _man8_verb(verb: Verb) -> list[str]:
    words = [f"\\fB{PROG} {roff(verb.name)}\\fR"]
    for option in (*verb.flagged, *verb.positionals):
        words.append(_styled(option) if option.required else f"[{_styled(option)}]")
    lines = [f".SS {roff(verb.name)}", ".PP", " ".join(words), ".PP"]
    lines.append(roff(_sentence(_capital(verb.description))))
    for option in verb.options:
        if option.help:  # an argument without help is fully said by the synopsis
            lines += _tagged(_styled(option), roff(_sentence(option.help)))
    return lines


def _styled(option: Option) -> str:
    """``--for DURATION`` as bold option names and an italic argument."""
    more = "..." if option.repeat else ""
    word = f"\\fI{roff(option.metavar)}\\fR{more}" if option.metavar else ""
    if option.positional:
        return word
    flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in option.flags)
    return f"{flags} {word}" if word else flags


# --- portsentinel.conf(5) and configuration.md share their prose -----------------------------


def _files5() -> tuple[tuple[str, str], ...]:
    """The FILES section of portsentinel.conf(5)."""
    return (
        (paths.CONFIG_FILE, "The configuration file."),
        (paths.DEFAULTS_FILE, "The modes file, DEFAULTS_FILE."),
        (paths.IGNORE_FILE, "The ignore file written by portsentinel migrate."),
    )


def _default_line(spec: SettingSpec) -> str:
    return f"{spec.key}={quote(spec.default)}"


def _groups() -> Iterator[tuple[str, list[SettingSpec]]]:
    for origin, title in ORIGIN_TITLES.items():
        specs = [s for s in SETTINGS if s.origin == origin]
        if specs:
            yield title, specs


def render_conf5() -> str:
    """``portsentinel.conf(5)``: the syntax, every setting, the files it names."""
    lines = [
        f'.\\" Generated by scripts/gen_docs.py from {PROG} {__version__}: do not edit.',
        _th(f"{PROG}.conf", 5, "File Formats"),
        ".SH NAME",
        f"{PROG}.conf \\- PortSentinel configuration file",
        ".SH SYNOPSIS",
        ".I /etc/portsentinel/portsentinel.conf",
        ".SH DESCRIPTION",
        *_paragraphs(SYNTAX),
        ".SH SETTINGS",
        ".ad l",  # long defaults (port lists) cannot be justified
    ]
    for title, specs in _groups():
        lines.append(f".SS {roff(title)}")
        for spec in specs:
            lines += _conf5_setting(spec)
    lines += ['.SH "IGNORE AND MODES FILES"', *_paragraphs(IGNORE_FILE)]
    lines += ['.SH "DIFFERENCES FROM PORTSENTRY"']
    for text in COMPATIBILITY:
        lines += [".IP \\(bu 2", roff(text)]
    lines += [".SH FILES"]
    for path, text in _files5():
        lines += _tagged(f".I {roff_code(path)}", roff(text))
    lines += ['.SH "SEE ALSO"', ".BR portsentinel (8),", ".BR portsentry.conf (5)"]
    return "\n".join(lines) + "\n"


def _conf5_setting(spec: SettingSpec) -> list[str]:
    facts = f"Type: {spec.parse.name}; unit: {spec.unit}. Accepts {spec.parse.expected}."
    return [
        ".TP",
        f".B {spec.key}",
        roff(_sentence(spec.help)),
        ".br",
        roff(facts),
        ".br",
        "Default: " + roff_code(_default_line(spec)),
    ]


# --- docs/configuration.md ------------------------------------------------------------------


def _md(text: str) -> str:
    """Table-cell-safe Markdown text."""
    return text.replace("|", "\\|")


def _md_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{_md(text)}{fence}"


def render_configuration_md() -> str:
    """The configuration reference as Markdown: syntax, a table, then every setting."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from src/portsentinel/config/schema.py: "
        "do not edit. -->",
        "",
        "## Syntax",
        "",
        *_md_paragraphs(SYNTAX),
        "## Settings at a glance",
        "",
        "| Key | Default | Unit | From |",
        "|---|---|---|---|",
    ]
    labels = {origin: title.split(" from ")[-1] for origin, title in ORIGIN_TITLES.items()}
    labels["portsentinel"] = "PortSentinel"
    for spec in SETTINGS:
        default = _md_code(quote(spec.default))
        anchor = spec.key.lower()
        out.append(f"| [`{spec.key}`](#{anchor}) | {default} | {spec.unit} | "
                   f"{labels[spec.origin]} |")  # fmt: skip
    out.append("")
    for title, specs in _groups():
        out += [f"## {title}", ""]
        for spec in specs:
            out += _md_setting(spec)
    out += ["## Ignore and modes files", "", *_md_paragraphs(IGNORE_FILE)]
    out += ["## Differences from PortSentry", ""]
    out += [f"- {text}" for text in COMPATIBILITY]
    out.append("")
    return "\n".join(out)


def _md_paragraphs(texts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for text in texts:
        out += [text, ""]
    return out


def _md_setting(spec: SettingSpec) -> list[str]:
    return [
        f"### {spec.key}",
        "",
        _sentence(spec.help),
        "",
        f"- Default: {_md_code(_default_line(spec))}",
        f"- Type: {spec.parse.name} ({spec.unit})",
        f"- Accepts: {spec.parse.expected}",
        "",
    ]
