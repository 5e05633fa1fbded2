from __future__ import annotations

import stat
from pathlib import Path

import pytest

from portsentinel.config import load_config
from portsentinel.errors import ConfigError
from portsentinel.fleet import join

ENROLMENT = """# PortSentinel fleet enrolment of web1: portsentinel fleet join FILE
url: http://198.19.1.1:8080
login: web1-portsentinel
password: s3cret
bouncer_key: 0123456789abcdef0123456789abcdef
"""


def test_an_enrolment_splits_into_the_machine_and_the_key() -> None:
    found = join.parse_enrolment(ENROLMENT, "web1.fleet")
    assert (found.machine.url, found.machine.login, found.machine.password) == (
        "http://198.19.1.1:8080", "web1-portsentinel", "s3cret")  # fmt: skip
    assert found.key == "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (ENROLMENT.replace("bouncer_key", "# bouncer_key"), "web1.fleet: bouncer_key: one"),
        (ENROLMENT + "bouncer_key: x\n", "web1.fleet:6: bouncer_key: one"),
        (ENROLMENT.replace("url: http://198.19.1.1:8080\n", ""), "web1.fleet: url: no url"),
        (ENROLMENT.replace("password:", "pass word:"), "web1.fleet:4: CROWDSEC_CREDENTIALS_FILE"),
    ],
)
def test_a_bad_enrolment_names_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        join.parse_enrolment(text, "web1.fleet")
    assert str(caught.value).startswith(where), str(caught.value)


def test_set_keys_replaces_the_active_line_and_adds_the_rest() -> None:
    text = '# CROWDSEC_LAPI_URL="commented"\nCROWDSEC_LAPI_URL="old"\nSCAN_TRIGGER="0"\n'
    done = join.set_keys(text, {"CROWDSEC_LAPI_URL": "http://x", "CROWDSEC_CA_FILE": "/ca"})
    assert done.splitlines() == [
        '# CROWDSEC_LAPI_URL="commented"', 'CROWDSEC_LAPI_URL="http://x"', 'SCAN_TRIGGER="0"',
        "", "# The fleet (portsentinel fleet join)", 'CROWDSEC_CA_FILE="/ca"',
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="quote"):
        join.set_keys("", {"CROWDSEC_CA_FILE": 'a"b'})


def test_join_writes_private_files_and_a_configuration_that_loads(tmp_path: Path) -> None:
    enrolment = tmp_path / "web1.fleet"
    enrolment.write_text(ENROLMENT)
    conf = tmp_path / "portsentinel.conf"
    conf.write_text('SCAN_TRIGGER="2"\n')
    conf.chmod(0o640)
    _found, said = join.join(str(enrolment), str(conf), str(tmp_path / "etc"), "/ca.pem")
    assert "CROWDSEC_LAPI_URL, CROWDSEC_CREDENTIALS_FILE" in said[1]
    machine, key = tmp_path / "etc" / join.MACHINE_FILE, tmp_path / "etc" / join.KEY_FILE
    for path in (machine, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    settings = load_config(str(conf)).settings
    assert settings.scan_trigger == 2
    assert settings.crowdsec_lapi_url == "http://198.19.1.1:8080"
    assert settings.crowdsec_credentials_file == str(machine)
    assert settings.crowdsec_bouncer_key_file == str(key)
    assert settings.crowdsec_ca_file == "/ca.pem"
    assert key.read_text() == "0123456789abcdef0123456789abcdef\n"
    with pytest.raises(ConfigError, match="cannot read"):
        join.join(str(tmp_path / "missing"), str(conf), str(tmp_path))
