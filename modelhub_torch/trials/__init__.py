"""The training engine behind DQL's ``evaluate``: a grid of trials over source
versions, trained with Lightning under successive-halving keep rules, every rung a
committed version (plan.py: config and grid; runner.py: the rung loop and executors;
training.py: one trial stretch; ray_executor.py; digits.py: a built-in data module).

Importing this package imports neither torch nor Lightning; planning and running do.
"""

from __future__ import annotations

from typing import Any

from modelhub_torch.trials.plan import (
    EvaluationError,
    EvaluationPlan,
    Threshold,
    TopRule,
    Trial,
    Vary,
    auto_values,
    plan_evaluation,
)


def run_evaluation(store: Any, plan: EvaluationPlan, *, executor: str = "embedded",
                   workers: int = 1) -> list[dict[str, Any]]:
    """See runner.run_evaluation (imported on first use)."""
    from modelhub_torch.trials.runner import run_evaluation as run

    return run(store, plan, executor=executor, workers=workers)


__all__ = ["EvaluationError", "EvaluationPlan", "Threshold", "TopRule", "Trial", "Vary", "auto_values",
           "plan_evaluation", "run_evaluation"]
