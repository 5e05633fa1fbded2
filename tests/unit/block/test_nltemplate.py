"""block/nltemplate.py: a datagram filled again is the one built afresh, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.block import nfnetlink as nl
from portsentinel.block.nltemplate import Template


@given(key=st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
       seq=st.integers(min_value=0, max_value=0x7FFFFFF0))  # fmt: skip
def test_a_template_filled_is_the_batch_built_afresh(key: bytes, seq: int) -> None:
    """The first ban's datagram, built once and filled with a key and numbers, is byte for
    byte what ``batch`` builds for them: both tables' messages, begin and end."""

    def make(k: bytes, first: int) -> bytes:
        return nl.batch([nl.element_message("portsentinel", "ban4", [(k, 3_600_000)], first + 1),
                         nl.element_message("portsentinel", "ban4", [(k, 3_600_000)], first + 2,
                                            nl.NFPROTO_NETDEV)], first)  # fmt: skip

    template = Template(make, len(key))
    assert len(template.heads) == 4  # begin, inet, netdev, end
    assert len(template.keys) == 2
    assert template.fill(key, seq) == make(key, seq)
    other = bytes(b ^ 0x5A for b in key)
    assert template.fill(other, seq + 7) == make(other, seq + 7)  # filled again: no trace left


def test_a_template_takes_only_keys_of_its_size() -> None:
    template = Template(lambda k, s: nl.get_element_message("t", "ssh4", k, s), 4)
    assert template.fill(bytes([198, 18, 0, 2]), 9) == nl.get_element_message(
        "t", "ssh4", bytes([198, 18, 0, 2]), 9
    )
    with pytest.raises(ValueError, match="16 bytes"):
        template.fill(bytes(16), 9)


def test_a_message_with_the_key_in_a_field_that_varies_is_refused() -> None:
    """A maker whose output changes beyond the key's copies cannot be a template."""
    with pytest.raises(ValueError, match="whole copies"):
        Template(lambda k, s: k + bytes([k[0] & 1]), 4)
