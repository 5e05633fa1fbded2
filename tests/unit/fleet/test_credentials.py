from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from portsentinel.config.schema import Settings
from portsentinel.errors import ConfigError
from portsentinel.fleet import credentials as c


def test_the_file_cscli_writes() -> None:
    text = "url: http://198.19.1.1:8080\nlogin: web1\npassword: 'abc:def'\n"
    assert c.parse_machine(text, "/f") == c.Machine("http://198.19.1.1:8080", "web1", "abc:def")


def test_a_bad_line_is_named() -> None:
    with pytest.raises(ConfigError, match=r"/f:2: CROWDSEC_CREDENTIALS_FILE: unexpected line"):
        c.parse_machine("login: a\nusername: b\npassword: c\n", "/f")
    with pytest.raises(ConfigError, match="no password"):
        c.parse_machine("login: a\n", "/f")


def test_the_key_file() -> None:
    assert c.parse_key("0123abcd\n", "/k") == "0123abcd"
    with pytest.raises(ConfigError, match="/k: CROWDSEC_BOUNCER_KEY_FILE"):
        c.parse_key("a b\n", "/k")


def test_plain_http_off_the_host_is_warned() -> None:
    assert c.plain_http_warning("http://127.0.0.1:8080") is None
    assert c.plain_http_warning("https://lapi.example:8080") is None
    warning = c.plain_http_warning("http://198.19.1.1:8080")
    assert warning is not None
    assert "unencrypted" in warning


def test_the_fleet_is_off_without_url_or_files(tmp_path: Path) -> None:
    assert c.fleet_config(Settings()) is None
    key = tmp_path / "key"
    key.write_text("k1\n")
    s = dataclasses.replace(Settings(), crowdsec_lapi_url="http://127.0.0.1:8080/",
                            crowdsec_bouncer_key_file=str(key))  # fmt: skip
    config = c.fleet_config(s)
    assert config is not None
    assert (config.url, config.machine, config.api_key) == ("http://127.0.0.1:8080", None, "k1")
    missing = dataclasses.replace(s, crowdsec_credentials_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="CROWDSEC_CREDENTIALS_FILE"):
        c.fleet_config(missing)
