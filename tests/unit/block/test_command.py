"""KILL_RUN_CMD / KILL_ROUTE / UNBLOCK_RUN_CMD: macro substitution and, above all, its safety.

Several tests run real commands (``/bin/sh``, ``touch``, ``printf``) in a temporary directory
and then look at what was created: a hostile value must never run anything.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portsentinel.block.base import BanSpec
from portsentinel.block.command import (
    CommandBackend,
    CommandTemplate,
    MacroValues,
    macro_values,
    needs_shell,
    shell_script,
    substitute,
    validate_mode,
    validate_port,
    validate_target,
)
from portsentinel.block.runner import Runner
from portsentinel.errors import BackendError
from portsentinel.model import Mode, Proto
from unit.block.block_fakes import FakeRunner

VALUES = MacroValues("198.18.0.2", "143", "stcp")
HOSTILE = [
    "1.2.3.4; touch /tmp/pwned",
    "$(touch x)",
    "`touch x`",
    "1.2.3.4 -j ACCEPT",
    "1.2.3.4\ntouch x",
    "1.2.3.4|sh",
    "--help",
    "'; touch x; '",
    "1.2.3.4/32 -o lo",
    "",
]


# --- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_targets_are_not_ip_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        validate_target(text)
    with pytest.raises(ValueError, match="does not appear to be"):
        BanSpec.create(text)


def test_targets_are_re_rendered() -> None:
    assert validate_target("FD00:5E:0:0::2") == "fd00:5e::2"
    assert validate_target("198.18.0.0/24") == "198.18.0.0/24"
    assert validate_target("198.18.0.2/32") == "198.18.0.2"


@given(st.text(max_size=40))
def test_any_text_is_refused_or_rendered_harmless(text: str) -> None:
    try:
        rendered = validate_target(text)
    except ValueError:
        return
    assert set(rendered) <= set("0123456789abcdef:./")


@pytest.mark.parametrize("port", [-1, 65536, True, "80", 80.0])
def test_bad_ports(port: object) -> None:
    with pytest.raises(ValueError, match="not a port number"):
        validate_port(port)


@pytest.mark.parametrize("mode", ["x; rm -rf /", "TCP", ""])
def test_bad_modes(mode: str) -> None:
    with pytest.raises(ValueError, match="not a mode name"):
        validate_mode(mode)


def test_macro_values() -> None:
    ban = BanSpec.create("fd00:5e::2", port=53, proto=Proto.UDP, mode=Mode.AUDP)
    assert macro_values(ban) == MacroValues("fd00:5e::2", "53", "audp")
    assert macro_values(BanSpec.create("198.18.0.0", prefix=24)).target == "198.18.0.0/24"
    assert macro_values(BanSpec.create("198.18.0.2")).mode == "manual"


@pytest.mark.parametrize(
    ("mode", "name"),
    [(Mode.STCP, "stealth"), (Mode.AUDP, "stealth"), (Mode.TCP, "connect"),
     (Mode.UDP, "connect"), (None, "manual")],
)  # fmt: skip
def test_mode_in_portsentry_2_0s_words(mode: Mode | None, name: str) -> None:
    assert macro_values(BanSpec.create("192.0.2.7", mode=mode), portsentry2=True).mode == name


def test_a_command_gets_2_0s_mode_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' ')"
    template = f'{sys.executable} -c "{code}" {out} $MODE$'
    ban = BanSpec.create("192.0.2.7", port=1, mode=Mode.TCP)
    run_backend(template, ban, portsentry2=True)
    run_backend(template, ban)
    assert out.read_text() == "connect tcp "


def test_substitution_order_and_every_occurrence() -> None:
    assert substitute("$TARGET$ $PORT$ $MODE$ $TARGET$", VALUES) == (
        "198.18.0.2 143 stcp 198.18.0.2"
    )
    assert substitute("$TARGET$PORT$", VALUES) == "198.18.0.2PORT$"  # $TARGET$ goes first


# --- the two paths ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "shell"),
    [
        ("/sbin/iptables -I INPUT -s $TARGET$ -j DROP", False),
        ("/sbin/route add -host $TARGET$ reject", False),
        ("logger 'blocked $TARGET$' \"port $PORT$\"", False),
        (r"logger a\ b", False),
        ("echo $TARGET$ | mail root", True),
        ("a $TARGET$; b", True),
        ("a && b", True),
        ("echo $TARGET$ >> /var/log/x", True),
        ("echo `date`", True),
        ("echo $(date)", True),
        ("echo $HOME", True),
        ("rm /tmp/*.x", True),
        ("PATH=/x cmd $TARGET$", True),
        ("cmd $TARGET$ # note", True),
        ("cmd a#b", False),
        ("logger 'a (b) | c; $x'", False),
        ('logger "a;b (c) & d"', False),
        ('logger "x $HOME"', True),
        ('logger "x `id`"', True),
        ('logger "a\\$b"', True),
        (r"logger a\|b", False),
    ],
)
def test_needs_shell(template: str, shell: bool) -> None:
    assert needs_shell(template) is shell
    assert CommandTemplate.parse(template).shell is shell


def test_argv_path_splits_first_then_substitutes() -> None:
    template = CommandTemplate.parse("/sbin/iptables -I INPUT -s $TARGET$ -j DROP")
    assert template.argv(VALUES) == [
        "/sbin/iptables",
        "-I",
        "INPUT",
        "-s",
        "198.18.0.2",
        "-j",
        "DROP",
    ]
    quoted = CommandTemplate.parse("logger -t ps 'blocked $TARGET$ port $PORT$ ($MODE$)'")
    assert quoted.argv(VALUES) == ["logger", "-t", "ps", "blocked 198.18.0.2 port 143 (stcp)"]


@given(
    st.sampled_from(
        ["cmd -s $TARGET$ -j DROP", "a '$TARGET$ x' $PORT$", "x$TARGET$y $MODE$", "$TARGET$"]
    ),
    st.from_regex(r"[0-9a-f:./ ;|&$()`'\"\\-]{0,20}", fullmatch=True),
)
def test_argv_word_count_never_depends_on_the_value(template: str, value: str) -> None:
    parsed = CommandTemplate.parse(template)
    argv = parsed.argv(MacroValues(value, "1", "tcp"))  # even an unvalidated value
    assert len(argv) == len(shlex.split(template))


def test_shell_path_uses_quoted_positional_parameters() -> None:
    template = CommandTemplate.parse("echo $TARGET$ $PORT$ | logger -t $MODE$")
    assert template.argv(VALUES) == [
        "/bin/sh", "-c", 'echo "${1}" "${2}" | logger -t "${3}"',
        "portsentinel", "198.18.0.2", "143", "stcp",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("template", "script"),
    [
        ('echo "at $TARGET$" | x', 'echo "at ${1}" | x'),
        ("echo 'at $TARGET$' | x", "echo 'at '\"${1}\"'' | x"),
        (r"echo \'$TARGET$ | x", r"echo \'" + '"${1}" | x'),
        ("""echo "it's $PORT$" 'a "$MODE$"'; x""", """echo "it's ${2}" 'a "'"${3}"'"'; x"""),
    ],
)
def test_shell_script_respects_the_quoting_context(template: str, script: str) -> None:
    assert shell_script(template) == script


def test_unparsable_templates() -> None:
    with pytest.raises(ValueError, match="empty"):
        CommandTemplate.parse("  ")
    with pytest.raises(ValueError, match="cannot split"):
        CommandTemplate.parse("logger 'unbalanced $TARGET$")
    with pytest.raises(BackendError, match="run_cmd"):
        CommandBackend(FakeRunner(), "logger 'unbalanced")


# --- real commands: nothing but the intended one runs --------------------------------------
def run_backend(template: str, ban: BanSpec, **kw: object) -> CommandBackend:
    backend = CommandBackend(Runner(), template, **kw)  # type: ignore[arg-type]
    backend.block(ban)
    return backend


def test_argv_path_runs_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import sys; open(sys.argv[1], 'w').write(repr(sys.argv[2:]))"
    template = f'{sys.executable} -c "{code}" {out} $TARGET$ $PORT$ $MODE$'
    run_backend(template, BanSpec.create("fd00:5e::2", port=22, mode=Mode.STCP), ipv6_targets=True)
    assert out.read_text() == "['fd00:5e::2', '22', 'stcp']"


@pytest.mark.parametrize(
    "template",
    [
        "printf '%s\\n' $TARGET$ $PORT$ $MODE$ > {out}",
        'printf \'%s\\n\' "$TARGET$" "$PORT$" "$MODE$" > {out}',
        "printf '%s\\n' '$TARGET$' '$PORT$' '$MODE$' > {out}",
        "cd {dir} && printf '%s\\n' $TARGET$ $PORT$ $MODE$ | cat > {out}",
    ],
)
def test_shell_path_gives_the_values_as_data(tmp_path: Path, template: str) -> None:
    out = tmp_path / "out"
    text = template.format(out=out, dir=tmp_path)
    run_backend(text, BanSpec.create("198.18.0.2", port=143, mode=Mode.ATCP))
    assert out.read_text() == "198.18.0.2\n143\natcp\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("target", HOSTILE)
def test_a_hostile_target_never_runs_anything(tmp_path: Path, target: str) -> None:
    os.chdir(tmp_path)
    runner = FakeRunner()
    backend = CommandBackend(runner, f"touch {tmp_path}/ran $TARGET$; echo $TARGET$")
    detail = {"backend": "run_cmd", "address": target, "prefix": 32, "port": 1, "proto": "tcp"}
    with pytest.raises(BackendError, match="unusable detail"):
        CommandBackend(runner, "true", f"touch {tmp_path}/ran $TARGET$").unblock(detail)
    with pytest.raises(ValueError, match="does not appear to be"):
        backend.block(BanSpec.create(target))
    assert runner.calls == []
    assert list(tmp_path.iterdir()) == []


def test_a_valid_ip_through_a_shell_template_runs_only_the_intended_command(
    tmp_path: Path,
) -> None:
    # The template itself is trusted; even so, the value only ever arrives as $1.
    template = f"cd {tmp_path} && touch made-$TARGET$ && echo $TARGET$ $PORT$ > log"
    backend = run_backend(template, BanSpec.create("198.18.0.2", port=31337))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "made-198.18.0.2"]
    assert (tmp_path / "log").read_text() == "198.18.0.2 31337\n"
    assert backend.degraded is None


def test_hostile_values_smuggled_past_validation_stay_data(tmp_path: Path) -> None:
    # Defence in depth: if a value ever slipped through, the shell still treats it as data.
    template = CommandTemplate.parse(f"cd {tmp_path} && echo $TARGET$ > out")
    values = MacroValues("1.2.3.4; touch pwned $(touch pwned2) `touch pwned3`", "1", "tcp")
    result = Runner().run(template.argv(values))
    assert result.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out").read_text() == f"{values.target}\n"


# --- the backend ------------------------------------------------------------------------------
def test_ipv6_targets_are_skipped_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner()
    backend = CommandBackend(runner, "/sbin/route add -host $TARGET$ reject", name="legacy")
    caplog.set_level(logging.INFO)
    detail = backend.block(BanSpec.create("fd00:5e::2"))
    assert runner.calls == []
    assert "IPv6" in str(detail["skipped"])
    assert "skipped for fd00:5e::2" in caplog.text
    backend.unblock(detail)
    assert runner.calls == []

    allowed = CommandBackend(runner, "fw6 $TARGET$", ipv6_targets=True)
    allowed.block(BanSpec.create("fd00:5e::2"))
    assert runner.argvs() == [("fw6", "fd00:5e::2")]


def test_failure_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner()
    runner.on(("blocker",), rc=1, stdout="x" * 5000, stderr="denied")
    backend = CommandBackend(runner, "blocker $TARGET$")
    with pytest.raises(BackendError, match=r"block command for 198\.18\.0\.2 failed: exit 1"):
        backend.block(BanSpec.create("198.18.0.2"))
    assert backend.degraded is not None
    assert "denied" in caplog.text
    assert "more characters" in caplog.text  # output truncated in the log
    assert len(caplog.text) < 2000


def test_timeout_is_enforced(tmp_path: Path) -> None:
    backend = CommandBackend(Runner(), "sleep 10 $PORT$", timeout=0.3)
    with pytest.raises(BackendError, match=r"timed out after 0\.3s"):
        backend.block(BanSpec.create("198.18.0.2", port=1))


def test_timeout_is_passed_to_the_runner() -> None:
    runner = FakeRunner()
    CommandBackend(runner, "x $TARGET$").block(BanSpec.create("198.18.0.2"))
    assert runner.calls[0].timeout == 30.0


def test_unblock_runs_the_unblock_command_with_the_recorded_values() -> None:
    runner = FakeRunner()
    backend = CommandBackend(runner, "ban $TARGET$ $PORT$", "unban $TARGET$ $PORT$ $MODE$")
    detail = backend.block(BanSpec.create("198.18.0.2", port=143, mode=Mode.TCP))
    assert detail["via_shell"] is False
    backend.unblock(detail)
    assert runner.argvs() == [("ban", "198.18.0.2", "143"), ("unban", "198.18.0.2", "143", "tcp")]


def test_unblock_without_a_command_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner()
    backend = CommandBackend(runner, "/sbin/route add -host $TARGET$ reject", name="legacy")
    detail = backend.block(BanSpec.create("198.18.0.2"))
    caplog.set_level(logging.INFO)
    backend.unblock(detail)
    assert len(runner.calls) == 1
    assert "no unblock command" in caplog.text


def test_check_has_nothing_to_inspect() -> None:
    assert CommandBackend(FakeRunner(), "x").check().intact
