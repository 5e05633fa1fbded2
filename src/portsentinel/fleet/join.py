"""``portsentinel fleet join FILE``: the PortSentinel host's half of the two-command set-up.

On the LAPI host, ``portsentinel-fleet-enroll HOST URL`` (``packaging/``) registers the host
as a CrowdSec machine and a bouncer with ``cscli`` and writes one *enrolment file*: the
machine's ``url:``, ``login:`` and ``password:`` lines as cscli writes them, plus a
``bouncer_key:`` line. Here ``join`` splits it into the two files the settings name (the
machine's file and the key file, mode 0600), sets ``CROWDSEC_LAPI_URL``,
``CROWDSEC_CREDENTIALS_FILE`` and ``CROWDSEC_BOUNCER_KEY_FILE`` (and ``CROWDSEC_CA_FILE``) in
the configuration (an existing line of the key is replaced, else the keys are added at the
end), and asks LAPI whether both credentials work. Bad input is a ``ConfigError`` naming the
file, the line and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from portsentinel.errors import ConfigError
from portsentinel.fleet.credentials import Machine, parse_key, parse_machine
from portsentinel.fleet.lapi import Lapi, LapiError

MACHINE_FILE = "crowdsec-machine.yaml"
KEY_FILE = "crowdsec-bouncer.key"
_KEY_LINE = re.compile(r"\s*bouncer_key\s*:\s*(.*)$")
_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Enrolment:
    machine: Machine
    key: str


def parse_enrolment(text: str, path: str) -> Enrolment:
    """The machine's lines and the ``bouncer_key:`` line of an enrolment file (pure)."""
    rest, keys = [], []
    for number, line in enumerate(text.splitlines(), 1):
        found = _KEY_LINE.match(line)
        if found:
            keys.append((number, found[1].strip().strip("'\"")))
            rest.append("")  # keeps the line numbers of the machine's part
        else:
            rest.append(line)
    if len(keys) != 1:
        where = keys[1][0] if keys else None
        raise ConfigError("one bouncer_key: line expected", file=path, line=where,
                          key="bouncer_key", expected="the file portsentinel-fleet-enroll "
                          "wrote")  # fmt: skip
    machine = parse_machine("\n".join(rest), path)
    if not machine.url:
        raise ConfigError("no url: line", file=path, key="url",
                          expected="the LAPI's URL as this host reaches it")  # fmt: skip
    return Enrolment(machine, parse_key(keys[0][1], path))


def set_keys(text: str, values: Mapping[str, str]) -> str:
    """The configuration ``text`` with each key of ``values`` set: its (last) active line
    replaced, or a line added at the end (pure). Values are quoted; a quote or a newline in
    one is refused."""
    for key, value in values.items():
        if any(c in value for c in '"\n\r'):
            raise ConfigError(f"{key}: a value with a quote or a newline", key=key)
    lines = text.splitlines()
    done: set[str] = set()
    for key, value in values.items():
        pattern = re.compile(rf"\s*{re.escape(key)}\s*=")
        at = [i for i, line in enumerate(lines) if pattern.match(line)]
        if at:
            lines[at[-1]] = f'{key}="{value}"'
            done.add(key)
    added = [f'{key}="{value}"' for key, value in values.items() if key not in done]
    if added:
        lines += ["", "# The fleet (portsentinel fleet join)", *added]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def join(
    enrolment_path: str, config_path: str, directory: str, ca_file: str = ""
) -> tuple[Enrolment, list[str]]:
    """Write the two files into ``directory`` and the settings into ``config_path``; the
    enrolment and the lines that say what was done."""
    try:
        raw = Path(enrolment_path).read_bytes()[:_LIMIT].decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {enrolment_path}: {exc}") from None
    enrolment = parse_enrolment(raw, enrolment_path)
    m = enrolment.machine
    target = Path(directory)
    machine_file, key_file = target / MACHINE_FILE, target / KEY_FILE
    try:
        target.mkdir(parents=True, exist_ok=True)
        _write_private(machine_file, f"url: {m.url}\nlogin: {m.login}\npassword: {m.password}\n")
        _write_private(key_file, enrolment.key + "\n")
        config = Path(config_path)
        before = config.read_text(encoding="utf-8") if config.exists() else ""
        values = {"CROWDSEC_LAPI_URL": m.url, "CROWDSEC_CREDENTIALS_FILE": str(machine_file),
                  "CROWDSEC_BOUNCER_KEY_FILE": str(key_file)}  # fmt: skip
        if ca_file:
            values["CROWDSEC_CA_FILE"] = ca_file
        tmp = config.with_name(f".{config.name}.tmp")
        tmp.write_text(set_keys(before, values), encoding="utf-8")
        if config.exists():
            os.chmod(tmp, config.stat().st_mode & 0o7777)
        os.replace(tmp, config)
    except OSError as exc:
        raise ConfigError(f"cannot write the fleet's files: {exc}") from None
    return enrolment, [
        f"fleet: machine {m.login} -> {machine_file} (0600), bouncer key -> {key_file} (0600)",
        f"fleet: {config_path}: {', '.join(values)} set",
    ]


def check(url: str, machine: Machine, key: str, ca_file: str = "", timeout: float = 5.0) -> str:
    """Log in as the machine and pull once with the key: a line saying how it went; raises
    ``LapiError`` when either fails."""
    lapi = Lapi(url, machine=machine, api_key=key, ca_file=ca_file or None, timeout=timeout)
    lapi.login()
    lapi.decisions("192.0.2.1")  # any address: the key is what is checked
    return f"fleet: LAPI {url} accepts the machine {machine.login} and the bouncer key"


__all__ = ["Enrolment", "LapiError", "check", "join", "parse_enrolment", "set_keys"]
