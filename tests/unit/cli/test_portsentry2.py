"""PortSentry 2.0's command line: every flag in its long and short spelling, what it makes of
the settings (``Invocation``), the daemon's first lines about it, and the dispatch from
``main`` (1.2's ``-atcp`` flags and PortSentinel's verbs keep their own parsers)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from portsentinel import paths
from portsentinel.cli import main as cli
from portsentinel.cli import portsentry2 as ps2
from portsentinel.config.setup import Invocation, Setup
from portsentinel.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    return ps2.parse(list(argv))


def test_the_defaults_are_2_0s() -> None:
    args = parse("-c", "/etc/portsentry/portsentry.conf")
    assert args.sentry_mode is None  # stealth, as in 2.0
    assert args.method == "pcap"
    assert (args.interfaces, args.logoutput) == (None, None)
    assert not (args.daemon)
    assert not (args.debug)
    assert not (args.verbose)
    assert not (args.no_local_check)
    assert not (args.no_service_check)
    assert args.config == "/etc/portsentry/portsentry.conf"
    assert args.handler is ps2.cmd_portsentry2
    assert ps2.log_outputs(args) == ["stdout"]
    assert ps2.invocation_of(args) == Invocation(portsentry2=True)


@pytest.mark.parametrize(
    ("short", "long"),
    [
        (["-m", "raw"], ["--method", "raw"]),
        (["-i", "eth0"], ["--interface", "eth0"]),
        (["-L"], ["--disable-local-check"]),
        (["-S"], ["--disable-service-check"]),
        (["-l", "syslog"], ["--logoutput", "syslog"]),
        (["-c", "/x.conf"], ["--configfile", "/x.conf"]),
        (["-D"], ["--daemon"]),
        (["-d"], ["--debug"]),
        (["-v"], ["--verbose"]),
    ],
)
def test_short_and_long_spellings_mean_the_same(short: list[str], long: list[str]) -> None:
    assert vars(parse("--stealth", *short)) == vars(parse("--stealth", *long))
    assert vars(parse(*short)) != vars(parse())  # each flag does change something


def test_all_flags_at_once_in_any_order() -> None:
    args = parse(
        "-S", "--connect", "-i", "eth0", "-L", "--interface=eth1", "-l", "stdout",
        "--logoutput=syslog", "-d", "-v", "-mraw", "--configfile=/p.conf",
        "--state-dir", "/s", "--events", "/e.jsonl", "--dry-run",
    )  # fmt: skip
    assert args.sentry_mode == "connect"
    assert args.interfaces == ["eth0", "eth1"]
    assert (args.method, args.config, args.state_dir, args.events) == (
        "raw", "/p.conf", "/s", "/e.jsonl"
    )  # fmt: skip
    assert args.dry_run
    assert args.no_local_check
    assert args.no_service_check
    assert ps2.log_outputs(args) == ["stdout", "syslog"]
    assert ps2.invocation_of(args) == Invocation(
        portsentry2=True, interfaces=("eth0", "eth1"), service_check=False
    )


def test_the_config_option_may_be_abbreviated_as_getopt_allows() -> None:
    assert parse("--stealth", "--config", "/a.conf").config == "/a.conf"


@pytest.mark.parametrize(
    "argv",
    [
        ["--stealth", "--connect"],
        ["--connect", "--stealth"],
        ["-m", "bpf"],
        ["-l", "file"],
        ["--stealth", "-atcp"],
        ["--stealth", "run"],
    ],
)
def test_what_2_0_refuses_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as exc:
            cli.main([flag] if flag == "-V" else ["--stealth", flag])
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith("portsentinel ")
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit):
            cli.main(["--stealth", flag])
        out = capsys.readouterr().out
        assert "--disable-service-check" in out
        assert "--state-dir" in out


@pytest.mark.parametrize(
    ("given", "interfaces", "loopback"),
    [
        (["ALL_NLO"], (), False),
        (["ALL"], (), True),
        (["any"], (), True),
        (["ALL", "any"], (), True),
        (["eth0", "veth1", "eth0"], ("eth0", "veth1"), False),
    ],
)
def test_interfaces(given: list[str], interfaces: tuple[str, ...], loopback: bool) -> None:
    argv = [word for name in given for word in ("-i", name)]
    invocation = ps2.invocation_of(parse(*argv))
    assert (invocation.interfaces, invocation.loopback) == (interfaces, loopback)


@pytest.mark.parametrize("given", [["ALL", "eth0"], ["ALL_NLO", "ALL"], ["eth0", "ALL_NLO"]])
def test_one_kind_of_interface_only_as_in_2_0(given: list[str]) -> None:
    argv = [word for name in given for word in ("-i", name)]
    with pytest.raises(ConfigError, match="only one kind of interface"):
        ps2.invocation_of(parse(*argv))


def test_a_bad_interface_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--interface"):
        ps2.invocation_of(parse("-i", "x" * 16))


def test_daemon_adds_syslog() -> None:
    assert ps2.log_outputs(parse("-D")) == ["stdout", "syslog"]
    assert ps2.log_outputs(parse("-D", "-l", "syslog")) == ["syslog"]


def test_systemd_is_known_by_its_invocation_id() -> None:
    assert ps2.under_systemd({"INVOCATION_ID": "0123abcd"})
    assert not ps2.under_systemd({"INVOCATION_ID": ""})
    assert not ps2.under_systemd({})


def test_the_first_lines_say_what_the_flags_do_here() -> None:
    args = parse("--connect")
    assert ps2.notes(args, ps2.invocation_of(args), systemd=False) == [
        "adminalert: PortSentry 2.0 command line: connect mode (tcp,udp); -m pcap: one "
        "AF_PACKET ring captures whichever method is named"
    ]
    args = parse("-L", "-S", "-D", "-v", "-d", "-m", "raw", "-i", "eth0", "-c", "/p.conf")
    lines = ps2.notes(args, ps2.invocation_of(args), systemd=True)
    assert lines[0].startswith("adminalert: PortSentry 2.0 command line: stealth mode (stcp,sudp)")
    assert "-m raw" in lines[0]
    assert any(line.startswith("adminalert: -L: the local check stays on") for line in lines)
    assert "adminalert: -S: ports a service uses are watched too" in lines
    assert any("the unit does not need -D" in line for line in lines)
    assert "adminalert: -v: PortSentinel's log has one level" in lines
    assert lines[-1] == (
        "debug: command line: mode stealth, interfaces eth0, log output stdout,syslog, config "
        "/p.conf, service check off"
    )
    without_systemd = ps2.notes(args, ps2.invocation_of(args), systemd=False)
    assert not any("-D" in line for line in without_systemd)


@pytest.mark.parametrize(
    ("argv", "portsentry2"),
    [
        (["--stealth"], True),
        (["--connect", "-c", "/p.conf"], True),
        (["-c", "/p.conf"], True),
        (["-i", "eth0"], True),
        (["-V"], True),
        (["-h"], False),
        (["--help"], False),
        (["--version"], False),
        (["run"], False),
        ([], False),
    ],
)
def test_which_command_lines_are_2_0s(argv: list[str], portsentry2: bool) -> None:
    assert ps2.is_portsentry2(argv) is portsentry2
    assert ps2.is_portsentry2(argv, "/usr/sbin/portsentry") is (portsentry2 or not argv)


def test_without_c_the_installed_config_else_2_0s_own(private_host_paths: Path) -> None:
    assert ps2.config_file("/given.conf") == "/given.conf"
    assert ps2.config_file(None) is None  # nothing installed: the embedded defaults
    legacy = Path(paths.PORTSENTRY_DIR) / "portsentry.conf"
    legacy.parent.mkdir(parents=True)
    legacy.write_text('TCP_PORTS="1"\n')
    assert ps2.config_file(None) == str(legacy)  # as 2.0 reads it without -c
    Path(paths.CONFIG_FILE).parent.mkdir(parents=True)
    Path(paths.CONFIG_FILE).write_text("")
    assert ps2.config_file(None) == paths.CONFIG_FILE  # a migrated installation's wins


def test_main_runs_the_daemon_with_2_0s_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[str, Invocation]] = []

    def fake_run(args: argparse.Namespace, setup: Setup, log: object, err: object,
                 notes: object = ()) -> int:  # fmt: skip
        seen.append((args.mode, setup.invocation))
        return 0

    conf = tmp_path / "portsentry.conf"
    conf.write_text('TCP_PORTS="1-1023"\nUDP_PORTS="7,9"\n')
    monkeypatch.setattr(ps2, "run_daemon", fake_run)
    assert cli.main(["--connect", "-S", "-c", str(conf), "--state-dir", str(tmp_path)]) == 0
    assert seen[0] == ("tcp,udp", Invocation(portsentry2=True, service_check=False))


def test_a_config_without_ports_is_refused_by_2_0s_command_line(tmp_path: Path) -> None:
    conf = tmp_path / "portsentry.conf"
    conf.write_text('SCAN_TRIGGER="0"\n')
    assert cli.main(["--stealth", "-c", str(conf), "--state-dir", str(tmp_path)]) == 2
