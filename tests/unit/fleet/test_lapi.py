from __future__ import annotations

import pytest

from portsentinel.fleet.lapi import Lapi, LapiError, _message


def test_an_unfiltered_delete_is_refused() -> None:
    lapi = Lapi("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unfiltered"):
        lapi.delete_decisions(origin="portsentinel")
    assert lapi.requests == 0


def test_no_credentials_no_request() -> None:
    lapi = Lapi("http://127.0.0.1:9")
    with pytest.raises(LapiError, match="CROWDSEC_CREDENTIALS_FILE"):
        lapi.post_alerts([])
    with pytest.raises(LapiError, match="CROWDSEC_BOUNCER_KEY_FILE"):
        lapi.stream()
    assert lapi.requests == 0


def test_error_messages() -> None:
    assert _message(b'{"message":"database is locked"}') == "database is locked"
    assert _message(b"plain text") == "plain text"
