"""``portsentinel install`` and ``uninstall``: put the service files in place, and take exactly
those away again.

Everything is written under ``--root`` (default ``/``), so packagers and tests can stage an
install in a directory. Nothing here starts, stops, enables or reloads a service: the verbs
print the ``systemctl`` commands to run. The configuration is never overwritten; uninstall
leaves it (and the state directory with its bans) unless ``--purge``. Install records the
files it wrote and the directories it created in the state directory, so uninstall removes
exactly those, and the directories only when they are empty again.

The man pages are the ones generated at build time and shipped in the package
(``system/man/``, written by ``scripts/gen_docs.py``): installing renders nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from portsentinel import paths
from portsentinel.config.commands import render_defaults
from portsentinel.config.load import MAX_CONFIG_BYTES
from portsentinel.files import MIB, read_regular
from portsentinel.store.lock import running_pid
from portsentinel.system import grants, service_files

MAN_PAGES = ("portsentinel.8", "portsentinel.conf.5")  # in system/man/, by section suffix
NEXT_STEPS = ("systemctl daemon-reload", "systemctl enable --now portsentinel")
PACKAGED_STEPS = ("systemctl daemon-reload", "systemctl restart portsentinel")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where install puts each file on the target system: ``portsentinel.paths`` as it is
    when a verb runs."""

    state_dir: str
    config_dir: str
    config: str
    unit_dir: str
    unit: str
    files_dropin: str
    root_dropin: str
    man_dir: str
    logrotate: str
    sysusers: str

    @classmethod
    def current(cls) -> Layout:
        return cls(
            state_dir=paths.STATE_DIR,
            config_dir=paths.CONFIG_DIR,
            config=paths.CONFIG_FILE,
            unit_dir=paths.UNIT_DIR,
            unit=f"{paths.UNIT_DIR}/{service_files.UNIT_NAME}",
            files_dropin=f"{paths.UNIT_DIR}/{service_files.FILES_DROPIN}",
            root_dropin=f"{paths.UNIT_DIR}/{service_files.ROOT_DROPIN}",
            man_dir=paths.MAN_DIR,
            logrotate=f"{paths.LOGROTATE_DIR}/portsentinel",
            sysusers=f"{paths.SYSUSERS_DIR}/portsentinel.conf",
        )

    @property
    def manifest(self) -> str:
        return f"{self.state_dir}/install-manifest.json"

    def man_page(self, name: str) -> str:
        return f"{self.man_dir}/man{name.rpartition('.')[2]}/{name}"

    @property
    def standard_files(self) -> tuple[str, ...]:
        """What uninstall removes when install left no record (installed by hand or by an
        old version)."""
        pages = tuple(self.man_page(name) for name in MAN_PAGES)
        return (self.unit, *self.dropins, *pages, self.logrotate, self.sysusers)

    @property
    def dropins(self) -> tuple[str, ...]:
        """Every drop-in install may write (or an earlier version wrote)."""
        old = (f"{self.unit_dir}/{name}" for name in service_files.OLD_DROPINS)
        return (self.files_dropin, self.root_dropin, *old)


def shipped_man_page(name: str) -> str:
    """A man page as the package ships it (``system/man/NAME``)."""
    return resources.files("portsentinel.system").joinpath("man", name).read_text("utf-8")


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
    def load(cls, root: Path, layout: Layout) -> Manifest | None:
        try:
            text = read_regular(str(under(root, layout.manifest)), 1 * MIB, "the install record")
            data = json.loads(text.decode("utf-8"))
            files = {str(k): bool(v) for k, v in dict(data["files"]).items()}
            return cls(files, [str(d) for d in data["dirs"]])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, root: Path, layout: Layout) -> None:
        data = {"version": 1, "files": self.files, "dirs": self.dirs}
        write_file(under(root, layout.manifest), json.dumps(data, indent=2) + "\n", 0o640)


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


def artifacts(layout: Layout, exec_start: str, config_text: str) -> list[Artifact]:
    """Every file install writes, given the program to run and the configuration in force."""
    found = [
        Artifact(layout.unit, service_files.unit_text(exec_start), 0o644),
        Artifact(layout.config, render_defaults(), 0o640, config=True),
        *(Artifact(layout.man_page(n), shipped_man_page(n), 0o644) for n in MAN_PAGES),
        Artifact(layout.logrotate, service_files.LOGROTATE, 0o644),
        Artifact(layout.sysusers, service_files.SYSUSERS, 0o644),
    ]
    wanted = grants.needs(config_text)
    if wanted.writable:
        text = service_files.files_dropin(wanted.writable)
        found.append(Artifact(layout.files_dropin, text, 0o644))
    if wanted.as_root:
        found.append(Artifact(layout.root_dropin, service_files.ROOT, 0o644))
    return found


def exec_start(root: Path) -> tuple[str, str]:
    """The program the unit runs, and a note for the user ("" when all is as expected).

    The unit names /usr/local/bin/portsentinel, where ``pip install`` as root puts it. When
    installing on this machine and that does not exist, the program next to the running
    Python (a virtual environment) is used instead.
    """
    default = paths.PROGRAM
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
    layout = Layout.current()
    manifest = Manifest.load(root, layout) or Manifest()
    actions = Actions(root, out, dry_run=dry_run)
    program, note = exec_start(root)
    config_text = _installed_config(under(root, layout.config))
    wanted = artifacts(layout, program, config_text or render_defaults())
    packaged = under(root, paths.PACKAGED_UNIT).exists()
    if packaged:  # the package owns the rest; install adds what the configuration needs
        out.write(f"{paths.PACKAGED_UNIT} is the Debian package's: writing drop-ins only\n")
        wanted = [a for a in wanted if a.target in layout.dropins]
        note = ""
    for artifact in wanted:
        actions.write(artifact, manifest)
    for dropin in set(layout.dropins) - {a.target for a in wanted}:
        if under(root, dropin).exists():
            actions.remove(dropin, "the configuration no longer needs it")
        manifest.files.pop(dropin, None)
    actions.make_dirs(layout.state_dir, manifest, mode=0o750)
    if not dry_run:
        manifest.save(root, layout)
        problem = _grant(root, layout, config_text or render_defaults(), out)
        note = "; ".join(n for n in (note, problem) if n)
    if note:
        err.write(f"portsentinel: warning: {note}\n")
    steps = PACKAGED_STEPS if packaged else NEXT_STEPS
    _next_steps(root, out, (f"portsentinel config check --config {layout.config}", *steps))
    return paths.EXIT_OK


def _grant(root: Path, layout: Layout, config_text: str, out: TextIO) -> str:
    """The service's user (created on this system when missing) gets what it needs; ""
    or why not. In a staging root without that user nothing is granted (packaging)."""
    if grants.user_ids(root) is None:
        if root.resolve() != Path("/"):
            return ""
        problem = grants.ensure_user(under(root, layout.sysusers), out)
        if problem:
            return problem
    config_dir = under(root, layout.config_dir)
    files = sorted(config_dir.iterdir()) if config_dir.is_dir() else []
    return grants.grant(root, files, grants.needs(config_text), out)


def _installed_config(path: Path) -> str:
    """The configuration in place ("" when there is none). One that is there but cannot be
    read (a FIFO, a symlink loop ...) is an ``OSError``: install stops rather than guess."""
    try:
        data = read_regular(str(path), MAX_CONFIG_BYTES, "a configuration file")
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", "replace")


def _next_steps(root: Path, out: TextIO, commands: tuple[str, ...]) -> None:
    where = "" if root.resolve() == Path("/") else f" (on the system installed in {root})"
    out.write(f"\nNext{where}:\n")
    for command in commands:
        out.write(f"  {command}\n")


# --- uninstall ------------------------------------------------------------------------------


def uninstall(root: Path, *, purge: bool, out: TextIO, err: TextIO) -> int:
    """Remove what install put; the configuration and state only with ``purge``."""
    layout = Layout.current()
    blocker = _still_in_use(root, layout)
    if blocker:
        err.write(f"portsentinel: {blocker}; first run: systemctl disable --now portsentinel\n")
        return paths.EXIT_FAILURE
    manifest = Manifest.load(root, layout)
    actions = Actions(root, out, dry_run=False)
    if manifest is None:
        out.write("no install record: removing the files install writes\n")
        manifest = Manifest(dict.fromkeys(layout.standard_files, False), [])
        manifest.files[layout.config] = True
    for target, is_config in manifest.files.items():
        if not under(root, target).is_file():
            continue
        if is_config and not purge:
            actions.say("keep", target, "configuration; uninstall --purge removes it")
        else:
            actions.remove(target)
    if purge:
        _remove_tree(actions, layout.config_dir)
        _remove_tree(actions, layout.state_dir)
    else:
        under(root, layout.manifest).unlink(missing_ok=True)
    for directory in reversed(manifest.dirs):
        _remove_if_empty(actions, directory)
    _next_steps(root, out, ("systemctl daemon-reload",))
    return paths.EXIT_OK


def _still_in_use(root: Path, layout: Layout) -> str:
    """Why the service must be stopped or disabled before its files go, or ""."""
    pid = running_pid(str(under(root, layout.state_dir)))
    if pid is not None:
        return f"the daemon is running (pid {pid})"
    for wants in sorted(under(root, layout.unit_dir).glob("*.wants")):
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
