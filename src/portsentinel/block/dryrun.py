"""A dry run's backend: a ban is recorded, nothing is applied.

``run --dry-run`` decides as the daemon always does and keeps what it decided in its (offline)
state store, so ``why``, ``history``, ``list`` and ``report`` show what a real run would have
done. Its would-be bans take this backend's name in the store (``dry_run``) instead of a
firewall's; blocking, lifting and checking them touch neither the kernel nor any file.
"""

from __future__ import annotations

from portsentinel.block.base import ActionDetail, BackendBase, BanSpec, CheckResult, ban_fields

NAME = "dry_run"


class DryRunBackend(BackendBase):
    """See the module docstring."""

    name = NAME

    def block(self, ban: BanSpec) -> ActionDetail:
        detail = ban_fields(ban, self.name)
        detail["applied"] = False
        return detail

    def unblock(self, detail: ActionDetail) -> None:
        """Nothing was applied, so nothing is undone."""

    def check(self) -> CheckResult:
        return CheckResult(True, ())
