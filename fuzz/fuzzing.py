"""What the fuzz harnesses share: the invariant check and the libFuzzer entry point.

Each harness (``fuzz_frames.py``, ``fuzz_config.py``, ``fuzz_pcap.py``) is a plain module with
a ``test_one_input(data: bytes) -> None`` that raises on a broken invariant. Plain, so that the
CI slice (``tests/unit/fuzz/test_slice.py``) runs the very same checks without atheris; run as
a script, a harness hands that function to atheris and libFuzzer.

Instrumentation: atheris can only instrument modules imported inside its import hook, but the
harnesses import the package at the top (the CI slice needs them without atheris). So
``run_libfuzzer`` instruments the package's functions in place afterwards, and only those:
coverage of the standard library would be noise that steers the mutator away from our code.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

PACKAGE = "portsentinel"


class Violation(AssertionError):  # noqa: N818 - an assertion, named for what it reports
    """A broken invariant: the input that raised it is a finding."""


def require(condition: bool, what: str) -> None:
    """Raise ``Violation(what)`` unless ``condition``; survives ``python -O``, unlike assert."""
    if not condition:
        raise Violation(what)


def _ours(obj: object, package: str) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(obj, types.FunctionType) and (
        module == package or (isinstance(module, str) and module.startswith(package + "."))
    )


def instrument_package(atheris: Any, package: str = PACKAGE) -> int:
    """Add coverage instrumentation to every function of ``package`` already loaded.

    Functions are patched in place (their ``__code__``), so references the harness already
    holds see the instrumented code too. Returns how many functions were instrumented.
    """
    functions = [obj for obj in gc.get_objects() if _ours(obj, package)]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def run_libfuzzer(test_one_input: Callable[[bytes], None], argv: Sequence[str]) -> None:
    """Instrument the package, then let libFuzzer drive ``test_one_input`` (never returns).

    ``argv`` takes libFuzzer's own options (``-runs=N``, ``-max_len=N``, corpus folders).
    """
    import atheris  # noqa: PLC0415 - optional: only the libFuzzer run needs it

    count = instrument_package(atheris)
    sys.stderr.write(f"INFO: instrumented {count} functions of {PACKAGE}\n")
    atheris.Setup(list(argv), test_one_input)
    atheris.Fuzz()
