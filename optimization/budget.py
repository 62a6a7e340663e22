"""Auto-compression's accuracy budget and objective: which candidates qualify, which one wins,
and why each of the others lost — in words a reviewer can read on the job."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OBJECTIVES = {
    "gzipped_size": ("gzipped_bytes", "smallest gzipped size"),
    "size": ("size_bytes", "smallest size"),
    "latency": ("latency_ms_p50", "lowest p50 latency"),
}


class BudgetError(ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    max_drop: float  # classification: accuracy points as a fraction (0.01 = 1 pt); regression: MSE increase
    relative: bool = False  # True: max_drop is a fraction of the parent's score
    objective: str = "gzipped_size"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Budget":
        try:
            max_drop = float(params.get("max_accuracy_drop", 0.01))
        except (TypeError, ValueError):
            raise BudgetError("max_accuracy_drop must be a number, e.g. 0.01 for one accuracy point.") from None
        if not 0 <= max_drop < 1:
            raise BudgetError(f"max_accuracy_drop must be between 0 and 1 (a fraction), got {max_drop}.")
        relative = params.get("relative", False)
        if not isinstance(relative, bool):
            raise BudgetError("relative must be true or false.")
        objective = params.get("objective", "gzipped_size")
        if objective not in OBJECTIVES:
            raise BudgetError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
        return cls(max_drop=max_drop, relative=relative, objective=objective)

    def describe(self) -> str:
        kind = "relative" if self.relative else "absolute"
        return f"max drop {self.max_drop:g} ({kind}), objective: {OBJECTIVES[self.objective][1]}"

    def allowed_loss(self, parent: dict[str, Any]) -> float:
        base = parent.get("accuracy") if parent.get("accuracy") is not None else parent.get("mse")
        return self.max_drop * abs(base or 0.0) if self.relative else self.max_drop

    def loss(self, parent: dict[str, Any], variant: dict[str, Any]) -> float:
        """How much worse the variant is: accuracy lost, or MSE gained (regression)."""
        if parent.get("accuracy") is not None and variant.get("accuracy") is not None:
            return float(parent["accuracy"]) - float(variant["accuracy"])
        if parent.get("mse") is not None and variant.get("mse") is not None:
            return float(variant["mse"]) - float(parent["mse"])
        raise BudgetError("auto needs accuracy (classification) or mse (regression) on the eval dataset.")

    def within(self, parent: dict[str, Any], variant: dict[str, Any]) -> tuple[bool, str]:
        loss, allowed = self.loss(parent, variant), self.allowed_loss(parent)
        metric = "accuracy" if parent.get("accuracy") is not None else "MSE"
        if loss <= allowed + 1e-12:
            return True, f"{metric} change {-loss:+.4f} is within the budget (max loss {allowed:.4f})"
        return False, f"{metric} loss {loss:.4f} exceeds the budget of {allowed:.4f}"

    def score(self, metrics: dict[str, Any]) -> float:
        value = metrics.get(OBJECTIVES[self.objective][0])
        return float("inf") if value is None else float(value)


def choose(budget: Budget, parent: dict[str, Any], candidates: list[dict[str, Any]]) -> int | None:
    """Mark each candidate ``within_budget``/``outcome``; return the winner's index or None.

    ``candidates`` items carry ``label`` and either ``metrics`` or ``error``.
    """
    qualified: list[int] = []
    for index, cand in enumerate(candidates):
        if cand.get("error"):
            cand.update(within_budget=False, outcome=f"failed: {cand['error']}")
            continue
        ok, why = budget.within(parent, cand["metrics"])
        cand["within_budget"] = ok
        cand["outcome"] = why
        if ok:
            qualified.append(index)
    if not qualified:
        return None
    winner = min(qualified, key=lambda i: (budget.score(candidates[i]["metrics"]), i))
    key, label = OBJECTIVES[budget.objective]
    best = budget.score(candidates[winner]["metrics"])
    for index in qualified:
        cand = candidates[index]
        if index == winner:
            cand["outcome"] = f"winner: {label} ({key} = {best:g}); {cand['outcome']}"
        else:
            mine = budget.score(cand["metrics"])
            ratio = mine / best if best else float("inf")
            cand["outcome"] = f"lost: {key} {mine:g} is {ratio:.2f}x the winner's {best:g}; {cand['outcome']}"
    return winner
