"""What the response tests share: a real store in the test's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.store.sqlite import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "state"))
