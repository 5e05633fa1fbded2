"""system/manual_text.py: the man pages' fixed prose is plain sentences that roff and
Markdown both take as they are."""

from __future__ import annotations

from portsentinel.system import manual_text


def _texts() -> list[str]:
    out: list[str] = []
    for name in dir(manual_text):
        value = getattr(manual_text, name)
        if name.isupper() and isinstance(value, tuple):
            for item in value:
                out += [item] if isinstance(item, str) else list(item)
    return out


def test_every_paragraph_is_a_finished_plain_sentence() -> None:
    texts = _texts()
    assert len(texts) >= 20
    for text in texts:
        assert text == text.strip(), text
        assert "\n" not in text
        assert "\t" not in text
        assert not text.startswith((".", "'")), text  # a roff request, not text


def test_the_metrics_section_names_the_setting_and_the_guard() -> None:
    prose = " ".join(manual_text.METRICS)
    assert 'METRICS_LISTEN="127.0.0.1:9469"' in prose
    assert 'METRICS_ALLOW_REMOTE="1"' in prose
