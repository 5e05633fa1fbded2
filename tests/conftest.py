"""Every test runs on a host of its own: the default paths of ``portsentinel.paths`` (the
config file, Debian's defaults file, resolv.conf, hosts.deny, the state and run directories,
what ``install`` writes...) point into a fresh temporary directory, so no test reads or writes
the machine's ``/etc``, ``/var``, ``/run`` or ``/usr`` because a setting or an option was left
at its default. A host with Debian's ``portsentry`` installed (``/etc/default/portsentry``
saying ``TCP_MODE="tcp"``) or with a ``/etc/portsentinel/portsentinel.conf`` then runs the
suite exactly as a bare one does; tests/e2e/test_hermetic.py proves it.

Each path keeps its shape under the test's directory (``/etc/default/portsentry`` becomes
``TMP/etc/default/portsentry``), so a test that wants a host file writes it at
``paths.X`` and the product finds it there. The files do not exist until a test writes them.
A test that writes there asks for ``private_host_paths`` by name, so that it cannot run
without this fixture (``--noconftest``) and write the host's own files.

Child Pythons are covered too (``python3 -m portsentinel ...``, ``python3 -c ...``): the
fixture puts a ``sitecustomize.py`` first on ``PYTHONPATH`` that applies the same paths,
passed in ``PORTSENTINEL_TEST_PATHS``, before the child imports anything else; there even
the shipped defaults the docs print (``SettingSpec.default``, taken at import) are the test's.
(It shadows a distribution's own sitecustomize in those children; nothing relies on one.)

The end-to-end tests build their hosts themselves (namespaces, containers laid out at the
shipped paths, a config naming every path setting), so the fixture leaves tests marked
``e2e`` alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portsentinel import paths

# Every constant of ``paths`` that is a place on the host, as shipped (names such as
# STORE_NAME and the exit codes are not places).
HOST_PATHS = {
    name: value
    for name, value in vars(paths).items()
    if name.isupper() and isinstance(value, str) and value.startswith("/")
}
PATHS_VARIABLE = "PORTSENTINEL_TEST_PATHS"

SITECUSTOMIZE = f'''\
"""Written by tests/conftest.py: a child of the test suite uses the test's paths."""

import json as _json
import os as _os

_redirected = _os.environ.get({PATHS_VARIABLE!r})
if _redirected:
    from portsentinel import paths as _paths

    for _name, _value in _json.loads(_redirected).items():
        setattr(_paths, _name, _value)
'''


def under(root: Path) -> dict[str, str]:
    """Every host path of ``paths`` moved under ``root``, keeping its shape."""
    return {name: str(root / value.lstrip("/")) for name, value in HOST_PATHS.items()}


@pytest.fixture(scope="session")
def _child_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return site


@pytest.fixture(autouse=True)
def private_host_paths(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path | None]:
    """Point every default host path at a fresh directory (yielded: the test's "/"), in this
    process and in every Python it starts."""
    if request.node.get_closest_marker("e2e") is not None:
        yield None
        return
    root = tmp_path_factory.mktemp("host")
    redirected = under(root)
    site = request.getfixturevalue("_child_site")
    # A patcher of its own, not the ``monkeypatch`` fixture: the test's patches and their
    # undoing keep the order the test gave them.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in redirected.items():
            patch.setattr(paths, name, value)
        patch.setenv(PATHS_VARIABLE, json.dumps(redirected))
        search = [str(site), os.environ.get("PYTHONPATH")]
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, search)))
        yield root
