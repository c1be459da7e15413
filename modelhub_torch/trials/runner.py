"""Running an evaluation plan: synchronous successive halving over the keep rules.

Rungs ``top(k1, m, n1) < top(k2, m, n2) < ...`` (sorted by steps): every live trial
trains to n1, validates and commits; trials failing a threshold stop there
("below threshold ..."); of the rest the best k1 by the metric continue (ties: the
lower trial number; a NaN or missing metric ranks last) and the others are
"stopped at step n1"; and so on; the survivors of the last rung train to their
configured end (``trainer.max_steps``), where thresholds are checked once more and
the rest are "kept". A trial that raises is "failed: <why>" and the others go on.

Executors run each rung's trials the same way (training.py), so they give the same
rows: ``embedded`` (this process; ``workers > 1``: that many spawned processes,
each reopening the repository by URL) and ``ray`` (a Ray Tune run per rung,
ray_executor.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from modelhub_torch.trials.plan import EvaluationError, EvaluationPlan, TopRule

if TYPE_CHECKING:
    from collections.abc import Iterator

    from modelhub_torch.store.repo import RepoStore

EXECUTORS = ("embedded", "ray")
Batch = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@contextmanager
def _executor(store: RepoStore, executor: str, workers: int) -> Iterator[Batch]:
    from modelhub_torch.trials.training import train_segment

    options = dict(store.loc.storage_options) or None
    if executor not in EXECUTORS:
        raise EvaluationError(f"unknown executor {executor!r}: use embedded or ray")
    if not isinstance(workers, int) or workers < 1:
        raise EvaluationError(f"workers must be a positive integer, got {workers!r}")
    if (executor == "ray" or workers > 1) and store.url.startswith("memory://"):
        raise EvaluationError("a memory:// repository lives in this process only: other processes cannot commit "
                              "to it; use workers=1 with the embedded executor, or a repository on disk")
    if executor == "ray":
        from modelhub_torch.trials.ray_executor import run_batch

        yield lambda jobs: run_batch(store.url, options, jobs, workers)
    elif workers == 1:
        yield lambda jobs: [train_segment(store, **job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            def run(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
                futures = [pool.submit(train_segment, store.url, storage_options=options, **job) for job in jobs]
                return [f.result() for f in futures]

            yield run


def _rank_key(rule: TopRule, metrics: dict[str, Any], number: int) -> tuple[float, int]:
    value = metrics.get(rule.metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return (math.inf, number)
    return (value if rule.direction == "min" else -value, number)


def run_evaluation(store: RepoStore, plan: EvaluationPlan, *, executor: str = "embedded",
                   workers: int = 1) -> list[dict[str, Any]]:
    """Train the plan's trials under its keep rules; one row per trial (by trial
    number): trial, source, ref (its last version), status, steps, each varied
    column, each metric a rule reads (its last value)."""
    state = {t.number: {"trial": t, "id": None, "ref": None, "steps": 0, "metrics": {}, "status": None}
             for t in plan.trials}
    live = [t.number for t in plan.trials]
    thresholds = tuple(plan.thresholds)

    def job(number: int, target: int, stage: str) -> dict[str, Any]:
        s = state[number]
        return {"trial": s["trial"], "resume": s["id"], "target": target, "statement": plan.statement,
                "imports": plan.imports, "thresholds": thresholds, "stage": stage}

    def train(numbers: list[int], targets: dict[int, int], stage: str, batch: Batch) -> list[int]:
        """Run one stretch; the trials still live afterwards (failures and thresholds out)."""
        results = batch([job(n, targets[n], stage) for n in numbers])
        alive = []
        for n, r in zip(numbers, results):
            s = state[n]
            if r.get("error"):
                s["status"] = f"failed: {r['error']}"
                continue
            s.update(id=r["id"], ref=r["ref"], steps=r["step"], metrics=r["metrics"])
            if r.get("status", stage) != stage:  # a threshold failed
                s["status"] = r["status"]
                continue
            alive.append(n)
        return alive

    with _executor(store, executor, workers) as batch:
        for i, rule in enumerate(plan.rungs):
            if not live:
                break
            live = train(live, dict.fromkeys(live, rule.steps), f"rung {i + 1}", batch)
            ranked = sorted(live, key=lambda n: _rank_key(rule, state[n]["metrics"], n))
            for n in ranked[rule.k:]:
                state[n]["status"] = f"stopped at step {state[n]['steps']}"
            live = sorted(ranked[: rule.k])
        ends = {n: state[n]["trial"].end_steps for n in live}
        todo = [n for n in live if state[n]["steps"] < ends[n] or state[n]["id"] is None]
        done = [n for n in live if n not in todo]
        live = sorted(done + (train(todo, ends, "end", batch) if todo else []))
        for n in live:
            state[n]["status"] = "kept"
    rows = []
    for t in plan.trials:
        s = state[t.number]
        row: dict[str, Any] = {"trial": t.number, "source": t.source, "ref": s["ref"], "status": s["status"],
                               "steps": s["steps"]}
        row.update(t.values)
        row.update({m: s["metrics"].get(m) for m in plan.metrics})
        rows.append(row)
    return rows


__all__ = ["EXECUTORS", "run_evaluation"]
