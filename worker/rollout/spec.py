"""What a rollout does (:class:`Change`) and how (:class:`RolloutSpec`): the command line's
choices, checked before anything is read or published."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.messages import (
    MODIFY_COMMAND,
    REMOVE_COMMAND,
    DeconfigureAction,
    ModifyParams,
    Operation,
    RemoveParams,
)
from worker.rollout.discovery import Pair, Selection
from worker.rollout.waves import Budget, WaveSize


@dataclass(frozen=True)
class Change:
    """What the rollout does to each pair: a modify's settings (Micetro names), or a remove."""

    operation: Operation
    settings: Mapping[str, int] = field(default_factory=dict)
    deconfigure_action: DeconfigureAction = DeconfigureAction.disable

    @classmethod
    def modify(cls, settings: Mapping[str, int | None]) -> Change:
        """ValueError (the model's own message) for settings a modify would reject."""
        given = {k: v for k, v in settings.items() if v is not None}
        change = cls(Operation.modify, given)
        change.params(Pair("check-a", "check", "check-b"))  # validate once, up front
        return change

    @classmethod
    def remove(cls, action: str) -> Change:
        return cls(Operation.remove, {}, DeconfigureAction(action))

    @property
    def routing_key(self) -> str:
        return f"request.{self.operation.value}"

    def params(self, pair: Pair) -> dict[str, Any]:
        try:
            if self.operation is Operation.modify:
                names = {
                    "Name": pair.relationship,
                    "PrimaryServer": pair.primary,
                    "SecondaryServer": pair.secondary,
                }
                model: ModifyParams | RemoveParams = ModifyParams.model_validate(
                    {**names, **self.settings}
                )
            else:
                model = RemoveParams.model_validate(
                    {
                        "Server": pair.primary,
                        "Name": pair.relationship,
                        "DeconfigureAction": self.deconfigure_action.value,
                    }
                )
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False):
                where = ".".join(str(p) for p in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)
            raise ValueError("; ".join(problems)) from None
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)

    def body(self, pair: Pair, rid: str, dry_run: bool, comment: str) -> dict[str, Any]:
        command = MODIFY_COMMAND if self.operation is Operation.modify else REMOVE_COMMAND
        return {
            "requestId": rid,
            "command": command,
            "params": self.params(pair),
            "dryRun": dry_run,
            "comment": comment,
        }

    def describe(self) -> dict[str, Any]:
        """For the results file, and to tell a rerun with other settings from a resume."""
        if self.operation is Operation.modify:
            return {"operation": "modify", "settings": dict(sorted(self.settings.items()))}
        return {"operation": "remove", "deconfigureAction": self.deconfigure_action.value}


@dataclass(frozen=True)
class RolloutSpec:
    """Everything the command line says about a rollout."""

    rollout_id: str
    change: Change
    selection: Selection
    waves: tuple[WaveSize, ...]
    budget: Budget
    results: Path
    concurrency: int = 8
    timeout: float = 300.0
    comment: str | None = None

    @property
    def audit_comment(self) -> str:
        """Every request says which rollout it belongs to (the servers' journals keep it)."""
        head = f"rollout {self.rollout_id}"
        return f"{head}: {self.comment}" if self.comment else head
