"""paths.py: one constant per default path and exit code, and no copy of one elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from portsentinel import paths

PACKAGE = Path(paths.__file__).resolve().parent
CANONICAL = {
    name: value for name, value in vars(paths).items() if name.isupper() and isinstance(value, str)
}


def test_the_defaults_are_absolute_paths_or_bare_names() -> None:
    assert CANONICAL, "paths.py declares no path"
    for name, value in CANONICAL.items():
        if name.endswith("_NAME"):
            assert "/" not in value, name
        else:
            assert value.startswith("/"), name
            assert not value.endswith("/"), name


def test_exit_codes_follow_the_design() -> None:
    assert (paths.EXIT_OK, paths.EXIT_FAILURE, paths.EXIT_USAGE) == (0, 1, 2)


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_module_keeps_its_own_copy_of_a_default_path() -> None:
    """A whole string equal to one of the paths is a copy that one assignment to ``paths``
    would miss. Text that merely mentions a path (help, templates, man pages) is not counted;
    only paths that the tests redirect are (the conftest points every one at a temp dir)."""
    # The conftest has redirected the module's attributes; compare with the values as shipped.
    shipped = set(_shipped_values())
    copies = {
        str(module.relative_to(PACKAGE)): sorted(found)
        for module in sorted(PACKAGE.rglob("*.py"))
        if module.name != "paths.py" and (found := _string_constants(module) & shipped)
    }
    assert copies == {}


def _shipped_values() -> list[str]:
    tree = ast.parse((PACKAGE / "paths.py").read_text(encoding="utf-8"))
    return [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and node.value.value.startswith("/")
    ]


@pytest.mark.parametrize("value", ["/etc/portsentinel/portsentinel.conf", "/var/lib/portsentinel"])
def test_the_copy_finder_sees_a_copy(tmp_path: Path, value: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(f"X = {value!r}\n", encoding="utf-8")
    assert value in _string_constants(module) & set(_shipped_values())
