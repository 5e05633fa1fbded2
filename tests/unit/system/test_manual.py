"""The generated documentation: committed copies equal a fresh rendering of cli's parser and
the settings, and it covers every setting and every verb (so docs and code cannot drift
apart); the man pages are in the package, where install finds them."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from portsentinel.cli import portsentry2
from portsentinel.cli.main import build_parser
from portsentinel.config.commands import quote
from portsentinel.config.schema import SETTINGS
from portsentinel.system import install, manual

REPO = Path(__file__).resolve().parents[3]
MAN8 = f"{manual.MAN_DIR}/portsentinel.8"
MAN5 = f"{manual.MAN_DIR}/portsentinel.conf.5"
DOCS = ("docs/configuration.md", MAN8, MAN5)
REGENERATE = "stale: run `python scripts/gen_docs.py` and commit the result"


@pytest.fixture
def generated() -> dict[str, str]:
    return manual.generated_files(build_parser(), portsentry2.build_parser())


@pytest.mark.parametrize("name", DOCS)
def test_committed_docs_equal_the_generator(name: str, generated: dict[str, str]) -> None:
    committed = (REPO / name).read_text(encoding="utf-8")
    assert committed == generated[name], f"{name} is {REGENERATE}"


def test_every_setting_is_documented(generated: dict[str, str]) -> None:
    markdown, page = generated["docs/configuration.md"], generated[MAN5]
    for spec in SETTINGS:
        assert f"\n### {spec.key}\n" in markdown, spec.key
        assert f"| [`{spec.key}`](#{spec.key.lower()}) |" in markdown, spec.key
        assert f"\n.B {spec.key}\n" in page, spec.key
        assert f"Default: {manual.roff_code(f'{spec.key}={quote(spec.default)}')}" in page
        assert f"- Default: `{spec.key}={quote(spec.default)}`" in markdown, spec.key


def test_every_verb_and_option_is_in_the_man_page(generated: dict[str, str]) -> None:
    page = generated[MAN8]
    verbs = list(manual.walk_verbs(build_parser()))
    names = {v.name for v in verbs}
    assert {"install", "uninstall", "migrate", "config check", "config defaults"} <= names
    for verb in verbs:
        assert f"\n.SS {manual.roff(verb.name)}\n" in page, verb.name
        for option in verb.options:
            if not option.positional:
                assert f".TP\n{manual._styled(option)}\n" in page, (verb.name, option.names)


def test_man_page_sections(generated: dict[str, str]) -> None:
    page = generated[MAN8]
    for section in ('.SH "EXIT STATUS"', ".SH FILES", ".SH SIGNALS", ".SH SYNOPSIS"):
        assert f"\n{section}\n" in page
    for code in ("0", "1", "2"):
        assert f".TP\n.B {code}\n" in page
    assert "SIGHUP" in page
    assert "\\-atcp" in page


def test_walk_verbs_flattens_nested_groups_and_reads_options() -> None:
    parser = argparse.ArgumentParser(prog="p")
    verbs = parser.add_subparsers()
    group = verbs.add_parser("config", help="group")
    inner = group.add_subparsers()
    check = inner.add_parser("check", help="check it")
    check.add_argument("--config", metavar="FILE", help="the file (default %(default)s)",
                       default="x.conf")  # fmt: skip
    check.add_argument("--local", action="append", metavar="ADDR", help="repeatable")
    check.add_argument("--json", action="store_true", help="JSON")
    check.add_argument("address", nargs="*", metavar="ADDR", help="addresses")
    found = list(manual.walk_verbs(parser))
    assert [v.name for v in found] == ["config check"]
    verb = found[0]
    assert verb.summary == "check it"
    assert verb.synopsis == (
        "portsentinel config check [--config FILE] [--local ADDR...] [--json] [ADDR...]"
    )
    assert verb.options[0].help == "the file (default x.conf)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("use --all or -atcp", "use \\-\\-all or \\-atcp"),
        ("a well-known port", "a well-known port"),
        (".starts with a dot", "\\&.starts with a dot"),
        ("'quote first", "\\&'quote first"),
        ("back\\slash", "back\\eslash"),
    ],
)
def test_roff_escapes_prose(text: str, expected: str) -> None:
    assert manual.roff(text) == expected


def test_roff_code_escapes_every_dash_and_lets_lists_break() -> None:
    assert manual.roff_code("1,2-3") == "1,\\:2\\-3"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("name", [MAN8, MAN5])
def test_man_pages_format_without_warnings(name: str, generated: dict[str, str]) -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"],
        input=generated[name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == ""


def test_readme_names_every_verb_and_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for verb in manual.walk_verbs(build_parser()):
        assert f"`{verb.name}" in readme, verb.name
    for link in ("docs/configuration.md", "CHANGELOG.md", MAN8):
        assert link in readme, link


def test_the_package_ships_the_committed_man_pages() -> None:
    for name in install.MAN_PAGES:
        committed = (REPO / manual.MAN_DIR / name).read_text(encoding="utf-8")
        assert install.shipped_man_page(name) == committed, name


def test_manual_renders_the_parser_it_is_given() -> None:
    parser = argparse.ArgumentParser(prog="portsentinel")
    verbs = parser.add_subparsers()
    verbs.add_parser("hello", help="say hello").add_argument("--loud", action="store_true")
    page = manual.render_man8(parser)
    assert "Verbs: hello.\n" in page
    assert ".SS hello\n" in page
    assert "\\fB\\-\\-loud\\fR" in page
    assert ".SS run\n" not in page


def test_the_page_names_portsentry_2_0s_invocation_and_its_options() -> None:
    page = manual.render_man8(build_parser(), portsentry2.build_parser())
    assert ".RB [ \\-\\-stealth | \\-\\-connect ]" in page
    assert "\\fB\\-S\\fR, \\fB\\-\\-disable-service-check\\fR" in page
    assert "LOG_FORMAT=2.0" in page
    assert "--disable-service-check" not in manual.render_man8(build_parser()).replace("\\-", "-")
