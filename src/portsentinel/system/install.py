"""``portsentinel install`` and ``uninstall``: put the service files in place, and take exactly
those away again.

Everything is written under ``--root`` (default ``/``), so packagers and tests can stage an
install in a directory. Nothing here starts, stops, enables or reloads a service: the verbs
print the ``systemctl`` commands to run. The configuration is never overwritten; uninstall
leaves it (and the state directory with its bans) unless ``--purge``. Install records the
files it wrote and the directories it created in the state directory, so uninstall removes
exactly those, and the directories only when they are empty again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from portsentinel.config.commands import render_defaults
from portsentinel.config.load import parse_config
from portsentinel.config.types import BlockLevel
from portsentinel.store.lock import running_pid
from portsentinel.system import service_files

EXIT_OK, EXIT_FAILURE = 0, 1

STATE_DIR = "/var/lib/portsentinel"
CONFIG_DIR = "/etc/portsentinel"
CONFIG_PATH = f"{CONFIG_DIR}/portsentinel.conf"
UNIT_DIR = "/etc/systemd/system"
UNIT_PATH = f"{UNIT_DIR}/{service_files.UNIT_NAME}"
DROPIN_PATH = f"{UNIT_DIR}/{service_files.HOSTS_DENY_DROPIN}"
MAN8_PATH = "/usr/local/share/man/man8/portsentinel.8"
MAN5_PATH = "/usr/local/share/man/man5/portsentinel.conf.5"
LOGROTATE_PATH = "/etc/logrotate.d/portsentinel"
MANIFEST_PATH = f"{STATE_DIR}/install-manifest.json"
# What uninstall removes when install left no record (installed by hand or by an old version).
STANDARD_FILES = (UNIT_PATH, DROPIN_PATH, MAN8_PATH, MAN5_PATH, LOGROTATE_PATH)
NEXT_STEPS = ("systemctl daemon-reload", "systemctl enable --now portsentinel")


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file install writes: its path on the target system, text and mode."""

    target: str
    text: str
    mode: int
    config: bool = False  # never overwritten; removed only by ``uninstall --purge``


@dataclass(slots=True)
class Manifest:
    """What install put on the system: files (path -> is it configuration) and the
    directories it created, in creation order."""

    files: dict[str, bool] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> Manifest | None:
        try:
            data = json.loads(under(root, MANIFEST_PATH).read_text(encoding="utf-8"))
            files = {str(k): bool(v) for k, v in dict(data["files"]).items()}
            return cls(files, [str(d) for d in data["dirs"]])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, root: Path) -> None:
        data = {"version": 1, "files": self.files, "dirs": self.dirs}
        write_file(under(root, MANIFEST_PATH), json.dumps(data, indent=2) + "\n", 0o640)


def under(root: Path, target: str) -> Path:
    """The real location of ``target`` (a path on the target system) below ``root``."""
    return root / target.lstrip("/")


class Actions:
    """Carries out (or, in a dry run, only reports) the file changes, one line each."""

    def __init__(self, root: Path, out: TextIO, *, dry_run: bool) -> None:
        self.root = root
        self.out = out
        self.dry_run = dry_run
        self._made: set[str] = set()  # created in this run (a dry run only pretends to)

    def say(self, verb: str, target: str, note: str = "") -> None:
        shown = str(under(self.root, target)) + ("/" if target.endswith("/") else "")
        verb = f"would {verb}" if self.dry_run else verb
        self.out.write(f"{verb:<16} {shown}{f'  ({note})' if note else ''}\n")

    def make_dirs(self, target: str, manifest: Manifest, mode: int = 0o755) -> None:
        """Create ``target`` (with ``mode``) and its missing parents (0755), recording each."""
        missing = [
            d
            for d in _self_and_parents(target)
            if d not in self._made and not under(self.root, d).exists()
        ]
        for directory in reversed(missing):
            self.say("create", directory + "/")
            self._made.add(directory)
            if not self.dry_run:
                under(self.root, directory).mkdir(mode=mode if directory == target else 0o755)
            if directory not in manifest.dirs:
                manifest.dirs.append(directory)

    def write(self, artifact: Artifact, manifest: Manifest) -> None:
        path = under(self.root, artifact.target)
        if artifact.config and path.exists():
            self.say("keep", artifact.target, "exists; never overwritten")
            return
        self.make_dirs(str(Path(artifact.target).parent), manifest)
        self.say("update" if path.exists() else "install", artifact.target)
        if not self.dry_run:
            write_file(path, artifact.text, artifact.mode)
        manifest.files[artifact.target] = artifact.config

    def remove(self, target: str, note: str = "") -> None:
        self.say("remove", target, note)
        if not self.dry_run:
            under(self.root, target).unlink(missing_ok=True)


def _self_and_parents(target: str) -> Iterator[str]:
    path = Path(target)
    while str(path) != path.anchor:
        yield str(path)
        path = path.parent


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically: a reader never sees half a unit or config file."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- install --------------------------------------------------------------------------------


def artifacts(exec_start: str, config_text: str) -> list[Artifact]:
    """Every file install writes, given the program to run and the configuration in force."""
    from portsentinel.system import manual  # noqa: PLC0415 - the daemon imports this module too

    parser = manual.full_parser()
    found = [
        Artifact(UNIT_PATH, service_files.unit_text(exec_start), 0o644),
        Artifact(CONFIG_PATH, render_defaults(), 0o640, config=True),
        Artifact(MAN8_PATH, manual.render_man8(parser), 0o644),
        Artifact(MAN5_PATH, manual.render_conf5(), 0o644),
        Artifact(LOGROTATE_PATH, service_files.LOGROTATE, 0o644),
    ]
    directory = hosts_deny_directory(config_text)
    if directory is not None:
        found.append(Artifact(DROPIN_PATH, service_files.hosts_deny_dropin(directory), 0o644))
    return found


def hosts_deny_directory(config_text: str) -> str | None:
    """The directory of HOSTS_DENY_FILE when the configuration blocks through hosts.deny
    (KILL_HOSTS_DENY set and a BLOCK level of 1), else None."""
    found = parse_config(config_text, CONFIG_PATH)
    if found.config is None:
        return None
    s = found.config.settings
    blocking = BlockLevel.BLOCK in (s.block_tcp, s.block_udp)
    if not (s.kill_hosts_deny and blocking and s.hosts_deny_file.startswith("/")):
        return None
    return os.path.dirname(s.hosts_deny_file) or "/"


def exec_start(root: Path) -> tuple[str, str]:
    """The program the unit runs, and a note for the user ("" when all is as expected).

    The unit names /usr/local/bin/portsentinel, where ``pip install`` as root puts it. When
    installing on this machine and that does not exist, the program next to the running
    Python (a virtual environment) is used instead.
    """
    default = service_files.DEFAULT_EXEC
    if under(root, default).exists():
        return default, ""
    if root.resolve() != Path("/"):
        return default, f"{default} does not exist in {root}: install the package there too"
    candidate = str(Path(sys.executable).parent / "portsentinel")
    if not os.access(candidate, os.X_OK) or any(c.isspace() for c in candidate):
        return default, f"{default} does not exist: the service cannot start until it does"
    note = f"{default} does not exist: the unit runs {candidate}"
    if candidate.startswith(("/root/", "/home/")):
        note += " (ProtectHome=yes hides /root and /home from the service: install elsewhere)"
    return candidate, note


def install(root: Path, *, dry_run: bool, out: TextIO, err: TextIO) -> int:
    """Write the unit, man pages, logrotate rules, default config (if none) and state dir."""
    if not dry_run:
        root.mkdir(parents=True, exist_ok=True)  # a staging root, like make's DESTDIR
    manifest = Manifest.load(root) or Manifest()
    actions = Actions(root, out, dry_run=dry_run)
    program, note = exec_start(root)
    config = under(root, CONFIG_PATH)
    config_text = config.read_text(encoding="utf-8", errors="replace") if config.exists() else ""
    wanted = artifacts(program, config_text or render_defaults())
    for artifact in wanted:
        actions.write(artifact, manifest)
    if not any(a.target == DROPIN_PATH for a in wanted) and DROPIN_PATH in manifest.files:
        if under(root, DROPIN_PATH).exists():
            actions.remove(DROPIN_PATH, "hosts.deny is no longer used")
        del manifest.files[DROPIN_PATH]
    actions.make_dirs(STATE_DIR, manifest, mode=0o750)
    if not dry_run:
        manifest.save(root)
    if note:
        err.write(f"portsentinel: warning: {note}\n")
    _next_steps(root, out, (f"portsentinel config check --config {CONFIG_PATH}", *NEXT_STEPS))
    return EXIT_OK


def _next_steps(root: Path, out: TextIO, commands: tuple[str, ...]) -> None:
    where = "" if root.resolve() == Path("/") else f" (on the system installed in {root})"
    out.write(f"\nNext{where}:\n")
    for command in commands:
        out.write(f"  {command}\n")


# --- uninstall ------------------------------------------------------------------------------


def uninstall(root: Path, *, purge: bool, out: TextIO, err: TextIO) -> int:
    """Remove what install put; the configuration and state only with ``purge``."""
    blocker = _still_in_use(root)
    if blocker:
        err.write(f"portsentinel: {blocker}; first run: systemctl disable --now portsentinel\n")
        return EXIT_FAILURE
    manifest = Manifest.load(root)
    actions = Actions(root, out, dry_run=False)
    if manifest is None:
        out.write("no install record: removing the files install writes\n")
        manifest = Manifest(dict.fromkeys(STANDARD_FILES, False), [])
        manifest.files[CONFIG_PATH] = True
    for target, is_config in manifest.files.items():
        if not under(root, target).is_file():
            continue
        if is_config and not purge:
            actions.say("keep", target, "configuration; uninstall --purge removes it")
        else:
            actions.remove(target)
    if purge:
        _remove_tree(actions, CONFIG_DIR)
        _remove_tree(actions, STATE_DIR)
    else:
        under(root, MANIFEST_PATH).unlink(missing_ok=True)
    for directory in reversed(manifest.dirs):
        _remove_if_empty(actions, directory)
    _next_steps(root, out, ("systemctl daemon-reload",))
    return EXIT_OK


def _still_in_use(root: Path) -> str:
    """Why the service must be stopped or disabled before its files go, or ""."""
    pid = running_pid(str(under(root, STATE_DIR)))
    if pid is not None:
        return f"the daemon is running (pid {pid})"
    for wants in sorted(under(root, UNIT_DIR).glob("*.wants")):
        link = wants / service_files.UNIT_NAME
        if link.is_symlink() or link.exists():  # an enabling link is absolute: may dangle here
            return f"the service is still enabled ({link})"
    return ""


def _remove_tree(actions: Actions, target: str) -> None:
    path = under(actions.root, target)
    if path.is_dir() and not path.is_symlink():
        actions.say("remove", target + "/", "--purge")
        shutil.rmtree(path)


def _remove_if_empty(actions: Actions, target: str) -> None:
    path = under(actions.root, target)
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        actions.say("remove", target + "/")
        path.rmdir()


# --- the verbs ------------------------------------------------------------------------------


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``install`` and ``uninstall``; handlers take ``(args, out, err)``."""
    put = verbs.add_parser(
        "install",
        help="install the systemd unit, man pages, logrotate rules and a default config",
        description=(
            "Write /etc/systemd/system/portsentinel.service, the man pages under "
            "/usr/local/share/man, /etc/logrotate.d/portsentinel, the default configuration "
            "/etc/portsentinel/portsentinel.conf (never over an existing one) and the state "
            "directory /var/lib/portsentinel, then print the systemctl commands to run. "
            "Starts nothing."
        ),
    )
    put.add_argument(
        "--root", default="/", metavar="DIR", help="install below DIR instead of / (staging)"
    )
    put.add_argument("--dry-run", action="store_true", help="print what would be done, only")
    put.set_defaults(handler=_cmd_install)
    remove = verbs.add_parser(
        "uninstall",
        help="remove what install put (the configuration and state only with --purge)",
        description=(
            "Remove the files install wrote and the directories it created once they are "
            "empty. Refuses while the service is running or enabled."
        ),
    )
    remove.add_argument("--root", default="/", metavar="DIR", help="uninstall below DIR")
    remove.add_argument(
        "--purge",
        action="store_true",
        help="also remove /etc/portsentinel and /var/lib/portsentinel (bans, events)",
    )
    remove.set_defaults(handler=_cmd_uninstall)


def _cmd_install(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return install(Path(args.root), dry_run=args.dry_run, out=out, err=err)
    except OSError as exc:
        err.write(f"portsentinel: install failed: {exc}\n")
        return EXIT_FAILURE


def _cmd_uninstall(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return uninstall(Path(args.root), purge=args.purge, out=out, err=err)
    except OSError as exc:
        err.write(f"portsentinel: uninstall failed: {exc}\n")
        return EXIT_FAILURE
