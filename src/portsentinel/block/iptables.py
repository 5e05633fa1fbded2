"""Bans with iptables/ip6tables: through ipset sets when ``ipset`` is there, else one rule each.

With ipset (one rule per chain and family, however many bans)::

    ipset create portsentinel4 hash:net family inet timeout 0      (inet6 for portsentinel6)
    iptables -I INPUT 1 -m set --match-set portsentinel4 src \
             -m comment --comment portsentinel -j DROP
    ipset add portsentinel4 198.18.0.3 timeout 3600 -exist         (timeout 0: permanent)

ipset keeps each ban's lifetime in the kernel (at most 2147483 s, about 24.8 days: a longer
ban is applied for that long and re-added by repair while the daemon runs).

Without ipset, each ban is ``iptables -I INPUT 1 -s ADDR/32 -m comment --comment portsentinel
-j DROP`` (ip6tables for IPv6), in every chain, made idempotent with ``-C``; such rules never
expire by themselves. The comment marks our rules, so ``check`` and ``unblock`` never touch
anyone else's. The detail records the method used, so a ban is undone the way it was applied
even after the settings changed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from portsentinel.block.base import (
    ActionDetail,
    BackendBase,
    BanSpec,
    CheckResult,
    ban_fields,
    detail_ban,
    kernel_timeout,
    key_of,
)
from portsentinel.block.runner import CommandRunner, RunResult
from portsentinel.errors import BackendError

COMMENT = "portsentinel"
SETS = {4: "portsentinel4", 6: "portsentinel6"}
CHAINS = ("INPUT", "FORWARD")
MAX_TIMEOUT = 2_147_483  # ipset's limit, in seconds
_WAIT = ("-w", "5")  # wait for the xtables lock rather than fail at once
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,28}")
METHOD_IPSET = "ipset"
METHOD_RULES = "rules"


class IptablesBackend(BackendBase):
    """See the module docstring. ``use_ipset`` None: use ipset if the command is installed."""

    name = "iptables"

    def __init__(
        self,
        runner: CommandRunner,
        *,
        use_ipset: bool | None = None,
        chains: Sequence[str] = CHAINS,
        iptables: str = "iptables",
        ip6tables: str = "ip6tables",
        ipset: str = "ipset",
    ) -> None:
        super().__init__()
        for chain in chains:
            _check_name(chain)
        self._runner = runner
        self._use_ipset = shutil.which(ipset) is not None if use_ipset is None else use_ipset
        self._chains = tuple(chains)
        self._tools = {4: iptables, 6: ip6tables}
        self._ipset = ipset

    @property
    def method(self) -> str:
        return METHOD_IPSET if self._use_ipset else METHOD_RULES

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """ipset: create both sets and the matching rules. Rules: check the tools work."""
        for version in (4, 6):
            if self._use_ipset:
                family = "inet6" if version == 6 else "inet"
                self._must(
                    [self._ipset, "create", SETS[version], "hash:net", "family", family,
                     "timeout", "0", "-exist"],
                    f"cannot create ipset {SETS[version]}",
                )  # fmt: skip
                for chain in self._chains:
                    self._ensure_rule(version, chain, _set_match(SETS[version]))
            else:
                self._must([self._tools[version], *_WAIT, "-S", self._chains[0]], "cannot list")
        self._ok()

    def block(self, ban: BanSpec) -> ActionDetail:
        detail = ban_fields(ban, self.name)
        if self._use_ipset:
            seconds = kernel_timeout(ban, MAX_TIMEOUT)
            self._must(
                [self._ipset, "add", SETS[ban.version], ban.key,
                 "timeout", str(seconds or 0), "-exist"],
                f"cannot add {ban.key} to {SETS[ban.version]}",
            )  # fmt: skip
            detail.update(method=METHOD_IPSET, set=SETS[ban.version], timeout=seconds)
        else:
            for chain in self._chains:
                self._ensure_rule(ban.version, chain, _source_match(ban))
            detail.update(method=METHOD_RULES, chains=list(self._chains), timeout=None)
        self._ok()
        return detail

    def unblock(self, detail: ActionDetail) -> None:
        """Undo as the detail says; what is already gone is fine (ipset ``-exist``, ``-C``)."""
        ban = detail_ban(detail, self.name)
        if detail.get("method") == METHOD_IPSET:
            name = _check_name(str(detail.get("set", SETS[ban.version])))
            self._must([self._ipset, "del", name, ban.key, "-exist"], f"cannot remove {ban.key}")
            return
        chains = detail.get("chains", list(self._chains))
        if not isinstance(chains, list):
            raise self._fail(f"unusable chains in detail: {chains!r}", degrade=False)
        for chain in chains:
            self._remove_rule(ban.version, _check_name(str(chain)), _source_match(ban))

    def check(self) -> CheckResult:
        problems: list[str] = []
        present: dict[str, float | None] = {}
        for version in (4, 6):
            if self._use_ipset:
                members = self._set_members(version, problems)
                if members is None:
                    continue
                present.update(members)
                for chain in self._chains:
                    if not self._has_rule(version, chain, _set_match(SETS[version])):
                        problems.append(f"{self._tools[version]} {chain}: no rule for the set")
            else:
                present.update(self._rule_members(version, problems))
        return CheckResult(not problems, tuple(problems), present)

    # --- rules ------------------------------------------------------------------------------------
    def _ensure_rule(self, version: int, chain: str, match: list[str]) -> None:
        if not self._has_rule(version, chain, match):
            self._must(
                [self._tools[version], *_WAIT, "-I", chain, "1", *match, *_TARGET],
                f"cannot insert a rule into {chain}",
            )

    def _remove_rule(self, version: int, chain: str, match: list[str]) -> None:
        for _ in range(16):  # duplicates someone else made; bounded all the same
            if not self._has_rule(version, chain, match):
                return
            self._must(
                [self._tools[version], *_WAIT, "-D", chain, *match, *_TARGET],
                f"cannot delete a rule from {chain}",
            )

    def _has_rule(self, version: int, chain: str, match: list[str]) -> bool:
        """``-C``: exit 0 present, 1 absent; anything else is a failure."""
        result = self._run([self._tools[version], *_WAIT, "-C", chain, *match, *_TARGET])
        if result.returncode in (0, 1):
            return result.returncode == 0
        raise self._fail(f"cannot check {chain}: {result.describe()}")

    def _rule_members(self, version: int, problems: list[str]) -> dict[str, float | None]:
        result = self._run([self._tools[version], *_WAIT, "-S"])
        if not result.ok:
            problems.append(f"{self._tools[version]} -S failed: {result.describe()}")
            return {}
        return dict.fromkeys(parse_rules(result.stdout, self._chains))

    def _set_members(self, version: int, problems: list[str]) -> dict[str, float | None] | None:
        result = self._run([self._ipset, "save", SETS[version]])
        if not result.ok:
            problems.append(f"ipset {SETS[version]} is missing: {result.describe()}")
            return None
        return parse_ipset_save(result.stdout, SETS[version])

    # --- running ----------------------------------------------------------------------------------
    def _run(self, argv: list[str]) -> RunResult:
        return self._runner.run(argv)

    def _must(self, argv: list[str], what: str) -> None:
        result = self._run(argv)
        if not result.ok:
            raise self._fail(f"{what}: {result.describe()}")


_TARGET = ("-m", "comment", "--comment", COMMENT, "-j", "DROP")


def _set_match(name: str) -> list[str]:
    return ["-m", "set", "--match-set", name, "src"]


def _source_match(ban: BanSpec) -> list[str]:
    return ["-s", f"{ban.address}/{ban.prefix}"]


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.startswith("-"):
        raise BackendError(f"iptables: {name!r} is not a chain or set name")
    return name


# --- parsing (pure) ------------------------------------------------------------------------------
def parse_rules(text: str, chains: Sequence[str]) -> list[str]:
    """Ban keys of our ``-s ADDR -m comment --comment portsentinel -j DROP`` rules in ``-S``."""
    keys: list[str] = []
    for line in text.splitlines():
        words = line.split()
        ours = (
            len(words) == 4 + len(_TARGET)
            and words[0] == "-A"
            and words[1] in chains
            and words[2] == "-s"
            and tuple(words[4:]) == _TARGET
        )
        if not ours:
            continue
        try:
            key = key_of(words[3])
        except ValueError:
            continue
        if key not in keys:
            keys.append(key)
    return keys


def parse_ipset_save(text: str, name: str) -> dict[str, float | None]:
    """Member key -> seconds left (None: permanent) from ``ipset save NAME``."""
    found: dict[str, float | None] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "add" or words[1] != name:
            continue
        try:
            key = key_of(words[2])
        except ValueError:
            continue
        found[key] = _timeout_word(words[3:])
    return found


def _timeout_word(words: list[str]) -> float | None:
    """The seconds after ``timeout`` in an ipset member line; None for 0 or none."""
    if "timeout" not in words[:-1]:
        return None
    try:
        value = int(words[words.index("timeout") + 1])
    except ValueError:
        return None
    return float(value) if value > 0 else None
