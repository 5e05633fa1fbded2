"""The unit tests do not depend on the host: run them inside a private mount namespace whose
``/etc`` holds Debian's ``/etc/default/portsentry`` saying ``TCP_MODE="tcp"`` and
``UDP_MODE="udp"`` (the ``portsentry`` package's bound modes) and a
``/etc/portsentinel/portsentinel.conf`` that would change every result, and they still pass.

The namespace's ``/etc`` is an overlay on the host's: the files are written to its upper layer,
a tmpfs of the namespace, so nothing on the host changes. Two controls make the passing run
mean something: in the same namespace the product, reading its default places, gets the bound
modes and the planted config; and a unit test run without tests/conftest.py (which is what
keeps the unit tests away from those places) fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The whole unit suite (about a minute and a half): the CLI's verbs, the config room, install
# and migrate and the daemon's service read default paths, and so may any room tomorrow.
SUITES = ("tests/unit",)

DEFAULTS_FILE = 'TCP_MODE="tcp"\nUDP_MODE="udp"\n'
# Every probe would be below the trigger and nothing blocked: any test that loaded this file
# instead of its own would see other events.
CONFIG_FILE = 'SCAN_TRIGGER="65535"\nBLOCK_TCP="0"\nBLOCK_UDP="0"\nTCP_PORTS="1"\n'

# What the product makes of the namespace's /etc when nothing redirects it.
PROBE = """
import json
from portsentinel.config.setup import load_setup
setup = load_setup(None, None)
print(json.dumps([setup.config.path, setup.modes_from, str(setup.tcp_mode),
                  str(setup.udp_mode), setup.settings.scan_trigger]))
"""

_REASON = (
    "needs root" if os.geteuid() != 0
    else "needs unshare (util-linux)" if shutil.which("unshare") is None
    else None
)  # fmt: skip
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def in_private_etc(
    layer: Path, command: str, *, config: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (shell) in a new mount namespace whose /etc is an overlay holding the
    planted files (``config``: the planted configuration too, else only Debian's defaults
    file, as on a host with the portsentry package); the overlay's layers live on a tmpfs
    mounted at ``layer`` inside it."""
    layers = f"lowerdir=/etc,upperdir={layer}/upper,workdir={layer}/work"
    plant_config = f"printf %s {shlex.quote(CONFIG_FILE)} >/etc/portsentinel/portsentinel.conf"
    script = f"""set -e
mount -t tmpfs tmpfs {shlex.quote(str(layer))}
mkdir {shlex.quote(str(layer / "upper"))} {shlex.quote(str(layer / "work"))}
mount -t overlay overlay -o {shlex.quote(layers)} /etc
mkdir -p /etc/default /etc/portsentinel
printf %s {shlex.quote(DEFAULTS_FILE)} >/etc/default/portsentry
{plant_config if config else ""}
{command}
"""
    env = dict(os.environ)
    env.pop("PORTSENTINEL_TEST_PATHS", None)  # never another test's redirection (conftest.py)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


HOST_FILES = (Path("/etc/default/portsentry"), Path("/etc/portsentinel/portsentinel.conf"))


def _host_files() -> list[bytes | None]:
    return [path.read_bytes() if path.exists() else None for path in HOST_FILES]


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[Path]:
    """The mount point of the namespace's overlay layers; the host's files are the same after."""
    before = _host_files()
    path = tmp_path / "layer"
    path.mkdir()
    yield path
    assert _host_files() == before


def test_the_namespace_shows_the_planted_files_to_the_product(layer: Path) -> None:
    done = in_private_etc(
        layer, f"cat /etc/default/portsentry; {shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ['TCP_MODE="tcp"', 'UDP_MODE="udp"']
    assert json.loads(lines[-1]) == [
        "/etc/portsentinel/portsentinel.conf", "/etc/default/portsentry", "tcp", "udp", 65535,
    ]  # fmt: skip


# A unit test that reads only default places (it writes nothing, so it is safe to run bare).
READS_DEFAULTS = "tests/unit/config/test_setup.py::test_embedded_defaults_when_nothing_is_installed"


def test_without_the_fixture_a_unit_test_sees_the_planted_files(layer: Path) -> None:
    # The control: the same namespace fails a unit test when tests/conftest.py is not loaded,
    # so the passing run below is the fixture's doing, not an accident of this host.
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest"]
    done = in_private_etc(layer, shlex.join([*argv, READS_DEFAULTS]))
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 failed" in done.stdout.splitlines()[-1]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The inner run's base directory: as short as a normal run's, since some tests put a
    Unix socket (107 bytes at most) in their tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="ph", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_unit_tests_pass_on_such_a_host(layer: Path, short_tmp: Path) -> None:
    pytest_argv = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        f"--basetemp={short_tmp}", *SUITES,
    ]  # fmt: skip
    done = in_private_etc(layer, "cat /etc/default/portsentry >&2\n" + shlex.join(pytest_argv))
    assert done.stderr.startswith(DEFAULTS_FILE), done.stderr[-3000:]  # the same namespace
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in done.stdout.splitlines()[-1]


def readme_first_command() -> str:
    """The quick start's first command as the README writes it, from its replay on."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    first = next(line for line in block.splitlines() if line and not line.startswith("#"))
    return first[first.index("portsentinel replay") :]


def test_the_readmes_first_command_shows_the_scan_on_a_host_with_debians_portsentry(
    layer: Path,
) -> None:
    """Debian's portsentry package says TCP_MODE="tcp" in /etc/default/portsentry: bound
    modes, which decide nothing from a capture. The README's first command still shows the
    sample's scanner blocked, and says which modes it replayed in and why."""
    command = readme_first_command().replace("portsentinel", f"{sys.executable} -m portsentinel", 1)
    done = in_private_etc(layer, f"cat /etc/default/portsentry >&2; {command}", config=False)
    assert done.returncode == 0, done.stderr
    assert 'TCP_MODE="tcp"' in done.stderr  # the namespace does hold Debian's file
    events = [json.loads(line) for line in done.stdout.splitlines()]
    blocks = [e for e in events if e.get("action") == "block"]
    assert [(e["src"], e["mode"]) for e in blocks] == [("198.18.0.2", "stcp")]
    assert "replay: tcp (from /etc/default/portsentry) binds its ports" in done.stderr
    assert "modes: stcp,sudp (from /etc/default/portsentry)" in done.stderr
