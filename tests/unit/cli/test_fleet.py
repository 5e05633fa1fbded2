from __future__ import annotations

import socket
from pathlib import Path

import pytest

from portsentinel.cli.main import main


def _enrolment(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "web1.fleet"
    path.write_text(f"url: {url}\nlogin: web1-portsentinel\npassword: pw\nbouncer_key: k1\n")
    return path


def test_join_without_check_writes_and_says_to_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrolment = _enrolment(tmp_path, "http://198.19.1.1:8080")
    conf = tmp_path / "portsentinel.conf"
    code = main(["fleet", "join", str(enrolment), "--config", str(conf), "--dir", str(tmp_path),
                 "--no-check"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "reload the daemon" in out
    assert 'CROWDSEC_LAPI_URL="http://198.19.1.1:8080"' in conf.read_text()


def test_join_says_when_lapi_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:  # nothing listens there: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    enrolment = _enrolment(tmp_path, f"http://127.0.0.1:{port}")
    code = main(["fleet", "join", str(enrolment), "--config", str(tmp_path / "c.conf"),
                 "--dir", str(tmp_path)])  # fmt: skip
    said = capsys.readouterr()
    assert code == 1
    assert "fleet join: LAPI http://127.0.0.1:" in said.err
    assert (tmp_path / "crowdsec-bouncer.key").read_text() == "k1\n"  # written all the same


def test_a_bad_enrolment_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.fleet"
    bad.write_text("url: http://x\nlogin: a\npassword: b\n")
    code = main(["fleet", "join", str(bad), "--config", str(tmp_path / "c.conf"), "--no-check"])
    assert code == 2
    assert f"{bad}: bouncer_key: one bouncer_key: line expected" in capsys.readouterr().err
