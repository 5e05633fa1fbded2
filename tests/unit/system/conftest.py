"""The system room's tests run with the paths as shipped.

install and migrate work below ``--root`` (a temporary directory in every test here), so the
shipped paths keep them off the host while the tests can say what a real install writes
(``/usr/local/share/man/...``), and the generated docs name the paths a reader's host has.
"""

from __future__ import annotations

import runpy

import pytest

from portsentinel import paths

# ``paths`` as its source defines it, whatever the suite's conftest redirected.
SHIPPED = {
    name: value
    for name, value in runpy.run_path(paths.__file__).items()
    if name.isupper() and isinstance(value, str)
}


@pytest.fixture(autouse=True)
def shipped_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SHIPPED.items():
        monkeypatch.setattr(paths, name, value)
