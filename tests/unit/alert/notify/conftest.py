"""The webhook receiver as a fixture: started on a free loopback port, stopped after the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from .notify_fakes import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)
