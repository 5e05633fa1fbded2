"""The nfnetlink element message, byte by byte: what the kernel reads (nf_tables.h layouts),
taken apart here the way the kernel does; and acknowledgements read back. The socket side
runs against the real kernel in tests/e2e/test_block_nfnetlink_live.py."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.block import nfnetlink as nl
from portsentinel.errors import BackendError


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    """(type without the nested flag, payload) of each netlink attribute."""
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        assert size >= 4
        out.append((kind & ~nl.NLA_F_NESTED, data[at + 4 : at + size]))
        at += (size + 3) & ~3
    assert at == len(data)
    return out


def messages(data: bytes) -> list[tuple[int, int, int, bytes, bytes]]:
    """(type, flags, seq, nfgenmsg, attributes) of each message."""
    out, at = [], 0
    while at < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, at)
        out.append((kind, flags, seq, data[at + 16 : at + 20], data[at + 20 : at + length]))
        at += (length + 3) & ~3
    return out


def test_an_element_message_names_table_set_key_and_timeout() -> None:
    elements = [(bytes([198, 18, 0, 9]), 3_600_000), (bytes([198, 18, 0, 10]), None)]
    data = nl.element_message("portsentinel", "ban4", elements, seq=7)
    ((kind, flags, seq, gen, body),) = messages(data)
    assert kind == (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWSETELEM
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_ACK  # no EXCL: re-adding is fine
    assert seq == 7
    assert gen == struct.pack("=BBH", nl.NFPROTO_INET, 0, 0)
    top = attrs(body)
    assert top[0] == (nl.NFTA_SET_ELEM_LIST_TABLE, b"portsentinel\0")
    assert top[1] == (nl.NFTA_SET_ELEM_LIST_SET, b"ban4\0")
    assert top[2][0] == nl.NFTA_SET_ELEM_LIST_ELEMENTS
    listed = attrs(top[2][1])
    assert [k for k, _ in listed] == [nl.NFTA_LIST_ELEM, nl.NFTA_LIST_ELEM]
    first, second = (dict(attrs(payload)) for _, payload in listed)
    assert attrs(first[nl.NFTA_SET_ELEM_KEY]) == [(nl.NFTA_DATA_VALUE, bytes([198, 18, 0, 9]))]
    assert struct.unpack(">Q", first[nl.NFTA_SET_ELEM_TIMEOUT]) == (3_600_000,)
    assert nl.NFTA_SET_ELEM_TIMEOUT not in second  # permanent


def test_a_batch_wraps_its_messages_in_begin_and_end_with_rising_numbers() -> None:
    inner = [nl.element_message("t", "s", [(bytes(16), 1000)], seq=n) for n in (11, 12)]
    data = nl.batch(inner, first_seq=10)
    parts = messages(data)
    assert [p[0] for p in parts] == [
        nl.NFNL_MSG_BATCH_BEGIN,
        (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWSETELEM,
        (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWSETELEM,
        nl.NFNL_MSG_BATCH_END,
    ]
    assert [p[2] for p in parts] == [10, 11, 12, 13]
    res_id = socket.htons(nl.NFNL_SUBSYS_NFTABLES)
    assert parts[0][3] == struct.pack("=BBH", 0, 0, res_id)
    assert parts[3][3] == struct.pack("=BBH", 0, 0, res_id)


def error_message(seq: int, code: int) -> bytes:
    return (
        struct.pack("=IHHII", 36, nl.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", code) + bytes(16)
    )


def test_acknowledgements_are_read_with_their_errno() -> None:
    data = error_message(5, 0) + error_message(6, -2)
    assert nl.acks(data) == [(5, 0), (6, 2)]


def test_a_truncated_answer_is_an_error_not_a_guess() -> None:
    with pytest.raises(BackendError, match="truncated"):
        nl.acks(error_message(5, 0)[:30] + struct.pack("=I", 999))
    with pytest.raises(BackendError, match="truncated"):
        nl.acks(struct.pack("=IHHII", 100, nl.NLMSG_ERROR, 0, 1, 0))


@given(st.binary(max_size=200))
def test_any_answer_is_read_or_refused_with_a_backend_error(data: bytes) -> None:
    try:
        for seq, code in nl.acks(data):
            assert isinstance(seq, int)
            assert isinstance(code, int)
    except BackendError:
        pass


def test_an_empty_add_sends_nothing() -> None:
    writer = nl.ElementWriter("portsentinel")
    writer.add("ban4", [])
    assert writer._sock is None  # no socket was even opened


def test_the_questions_name_table_set_and_key_and_ask_for_an_ack() -> None:
    data = nl.get_element_message("portsentinel", "ssh4", bytes([198, 18, 0, 9]), seq=3)
    ((kind, flags, seq, gen, body),) = messages(data)
    assert kind == (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_GETSETELEM
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK  # no dump: one lookup in the kernel
    assert (seq, gen) == (3, struct.pack("=BBH", nl.NFPROTO_INET, 0, 0))
    top = attrs(body)
    assert top[:2] == [(nl.NFTA_SET_ELEM_LIST_TABLE, b"portsentinel\0"),
                       (nl.NFTA_SET_ELEM_LIST_SET, b"ssh4\0")]  # fmt: skip
    ((_, item),) = attrs(top[2][1])
    key = dict(attrs(item))[nl.NFTA_SET_ELEM_KEY]
    assert attrs(key) == [(nl.NFTA_DATA_VALUE, bytes([198, 18, 0, 9]))]
    ((kind, flags, seq, _gen, body),) = messages(nl.get_set_message("portsentinel", "ssh4", 4))
    assert (kind, flags, seq) == (
        (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_GETSET,
        nl.NLM_F_REQUEST | nl.NLM_F_ACK,
        4,
    )
    assert attrs(body) == [(nl.NFTA_SET_TABLE, b"portsentinel\0"), (nl.NFTA_SET_NAME, b"ssh4\0")]


def test_a_delete_message_names_the_key_without_timeout_or_create() -> None:
    elements = [(bytes([198, 18, 0, 9, 6, 0, 0, 0]), 5_000)]
    data = nl.element_message(
        "portsentinel", "quiet4", elements, seq=3, family=nl.NFPROTO_NETDEV,
        kind=nl.NFT_MSG_DELSETELEM,
    )  # fmt: skip
    ((kind, flags, _seq, gen, body),) = messages(data)
    assert kind == (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_DELSETELEM
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    assert gen == struct.pack("=BBH", nl.NFPROTO_NETDEV, 0, 0)
    ((_, payload),) = attrs(attrs(body)[2][1])
    only = dict(attrs(payload))
    assert nl.NFTA_SET_ELEM_TIMEOUT not in only
    assert attrs(only[nl.NFTA_SET_ELEM_KEY]) == [(nl.NFTA_DATA_VALUE, elements[0][0])]


@given(key=st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
       seq=st.integers(min_value=0, max_value=0x7FFFFFF0))  # fmt: skip
def test_a_template_filled_is_the_batch_built_afresh(key: bytes, seq: int) -> None:
    """The first ban's datagram, built once and filled with a key and numbers, is byte for
    byte what ``batch`` builds for them: both tables' messages, begin and end."""

    def make(k: bytes, first: int) -> bytes:
        return nl.batch([nl.element_message("portsentinel", "ban4", [(k, 3_600_000)], first + 1),
                         nl.element_message("portsentinel", "ban4", [(k, 3_600_000)], first + 2,
                                            nl.NFPROTO_NETDEV)], first)  # fmt: skip

    template = nl.Template(make, len(key))
    assert len(template.heads) == 4  # begin, inet, netdev, end
    assert len(template.keys) == 2
    assert template.fill(key, seq) == make(key, seq)
    other = bytes(b ^ 0x5A for b in key)
    assert template.fill(other, seq + 7) == make(other, seq + 7)  # filled again: no trace left


def test_a_template_takes_only_keys_of_its_size() -> None:
    template = nl.Template(lambda k, s: nl.get_element_message("t", "ssh4", k, s), 4)
    assert template.fill(bytes([198, 18, 0, 2]), 9) == nl.get_element_message(
        "t", "ssh4", bytes([198, 18, 0, 2]), 9
    )
    with pytest.raises(ValueError, match="16 bytes"):
        template.fill(bytes(16), 9)


def test_a_message_with_the_key_in_a_field_that_varies_is_refused() -> None:
    """A maker whose output changes beyond the key's copies cannot be a template."""
    with pytest.raises(ValueError, match="whole copies"):
        nl.Template(lambda k, s: k + bytes([k[0] & 1]), 4)
