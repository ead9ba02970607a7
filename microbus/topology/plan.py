"""A plan: the changes that make live resources match a topology, rendered as a readable diff."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ChangeAction(enum.Enum):
    """What happens to one resource; the value is its diff marker."""

    CREATE = "+"
    UPDATE = "~"
    UNCHANGED = "="


@dataclass(frozen=True, kw_only=True)
class Change:
    """One resource's change, with human-readable details (attribute=value, or old → new)."""

    action: ChangeAction
    kind: str
    name: str
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The change as diff lines."""
        verb = {ChangeAction.CREATE: "create", ChangeAction.UPDATE: "update", ChangeAction.UNCHANGED: "unchanged"}
        head = f"{self.action.value} {verb[self.action]} {self.kind} {self.name}"
        return [head] + [f"    {detail}" for detail in self.details]


@dataclass
class Plan:
    """Changes in the order they are (or would be) made, and warnings about the topology."""

    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[Change]:
        """The changes that create or update something."""
        return [c for c in self.changes if c.action is not ChangeAction.UNCHANGED]

    @property
    def has_changes(self) -> bool:
        """True when something would be (or was) created or updated."""
        return bool(self.pending)

    def summary(self) -> str:
        """One line: how many resources are created, updated, unchanged."""
        counts = {action: sum(c.action is action for c in self.changes) for action in ChangeAction}
        return (
            f"{counts[ChangeAction.CREATE]} to create, {counts[ChangeAction.UPDATE]} to update, "
            f"{counts[ChangeAction.UNCHANGED]} unchanged"
        )

    def lines(self, *, verbose: bool = False) -> list[str]:
        """The plan as a readable diff (unchanged resources only when ``verbose``), then warnings."""
        out: list[str] = []
        for change in self.changes if verbose else self.pending:
            out.extend(change.lines())
        out.extend(f"! warning: {warning}" for warning in self.warnings)
        return out
