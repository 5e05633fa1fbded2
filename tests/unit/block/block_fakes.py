"""A scripted stand-in for ``block.runner.Runner``: records every command, answers by rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portsentinel.block.runner import RunResult

Matcher = Callable[[tuple[str, ...], str | None], bool]


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]
    input: str | None
    timeout: float | None


class FakeRunner:
    """Answers exit 0 with no output unless a rule says otherwise; the newest rule wins."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._rules: list[tuple[Matcher, list[int], str, str]] = []

    def on(
        self,
        match: Sequence[str] | Matcher,
        *,
        rc: int | Sequence[int] = 0,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        """Answer commands starting with ``match`` (an argv prefix) or accepted by it.

        ``rc`` may be a sequence: one exit status per call, the last one repeating."""
        if callable(match):
            matcher = match
        else:
            prefix = tuple(match)

            def matcher(argv: tuple[str, ...], _input: str | None) -> bool:
                return argv[: len(prefix)] == prefix

        codes = [rc] if isinstance(rc, int) else list(rc)
        self._rules.append((matcher, codes, stdout, stderr))

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
    ) -> RunResult:
        call = Call(tuple(argv), input, timeout)
        self.calls.append(call)
        for matcher, codes, stdout, stderr in reversed(self._rules):
            if matcher(call.argv, input):
                rc = codes.pop(0) if len(codes) > 1 else codes[0]
                return RunResult(call.argv, rc, stdout, stderr, 0.001)
        return RunResult(call.argv, 0, "", "", 0.001)

    def argvs(self) -> list[tuple[str, ...]]:
        return [call.argv for call in self.calls]
