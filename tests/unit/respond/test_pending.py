"""A ban on its way through ``ban_many``: what it stores of the request, and whether the
detection loop's element is the one the ban wants."""

from __future__ import annotations

import dataclasses

import pytest

from portsentinel.block import BanSpec
from portsentinel.model import Mode, Proto
from portsentinel.respond.pending import BanRequest, Pending, sent_as_is


def request(**kw: object) -> BanRequest:
    base = BanRequest("198.18.0.2", 79, Proto.UDP, Mode.AUDP, 1, "UDP scan", "scan_trigger",
                      {"ports": ["udp/79"], "hits": 3})  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def pending(req: BanRequest | None, seconds: float | None = 3600.0) -> Pending:
    spec = BanSpec.create("198.18.0.2", port=79, proto=Proto.UDP, mode=Mode.AUDP,
                          timeout=seconds)  # fmt: skip
    return Pending(0, req, ["nftables", "hosts_deny"], seconds, 1, None, spec)


def test_the_stored_evidence_is_the_requests_with_its_plan_and_target() -> None:
    assert pending(request()).evidence() == {
        "ports": ["udp/79"], "hits": 3, "plan": ["nftables", "hosts_deny"], "port": 79,
        "proto": "udp", "mode": "audp",
    }  # fmt: skip
    assert pending(request(mode=None)).evidence()["mode"] is None


def test_an_element_counts_as_sent_only_with_the_timeout_the_ban_wants() -> None:
    assert sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600)))
    assert sent_as_is(pending(request(in_kernel=True, kernel_timeout=None), seconds=None))
    assert not sent_as_is(pending(request()))  # the loop did not send it
    # A repeat offender: the loop sent a first offence's hour, the ban wants two.
    assert not sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600), 7200.0))
    assert not sent_as_is(pending(request(in_kernel=True, kernel_timeout=3600), None))
    assert not sent_as_is(pending(None))  # a stored ban re-applied at start


def test_a_re_applied_ban_has_no_request_and_an_unrecorded_one_no_record() -> None:
    with pytest.raises(ValueError, match="no request"):
        pending(None).evidence()
    with pytest.raises(ValueError, match="not recorded"):
        _ = pending(request()).ban
