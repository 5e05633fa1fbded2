"""The project's errors: one base, and a config error that says where and what was expected."""

from __future__ import annotations

import pytest

from portsentinel.errors import (
    BackendError,
    CaptureError,
    ConfigError,
    ConfigErrors,
    DecodeError,
    PortSentinelError,
    StoreError,
)


@pytest.mark.parametrize(
    "kind", [ConfigError, ConfigErrors, DecodeError, CaptureError, BackendError, StoreError]
)
def test_every_error_is_a_portsentinel_error(kind: type[Exception]) -> None:
    assert issubclass(kind, PortSentinelError)


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ({}, "bad value"),
        ({"file": "/x.conf"}, "/x.conf: bad value"),
        ({"file": "/x.conf", "line": 3}, "/x.conf:3: bad value"),
        ({"key": "SCAN_TRIGGER"}, "SCAN_TRIGGER: bad value"),
        (
            {"file": "/x.conf", "line": 3, "key": "SCAN_TRIGGER", "expected": "an integer"},
            "/x.conf:3: SCAN_TRIGGER: bad value (expected an integer)",
        ),
    ],
)
def test_a_config_error_reads_file_line_key_what_and_expected(
    where: dict[str, object], text: str
) -> None:
    err = ConfigError("bad value", **where)  # type: ignore[arg-type]
    assert str(err) == err.render() == text
    assert (err.file, err.line, err.key, err.message) == (
        where.get("file"), where.get("line"), where.get("key"), "bad value",
    )  # fmt: skip


def test_config_errors_keep_each_error_and_print_one_a_line() -> None:
    errors = [ConfigError("a", file="f", line=1), ConfigError("b", key="K")]
    batch = ConfigErrors(errors)
    assert batch.errors is errors
    assert str(batch) == "f:1: a\nK: b"
