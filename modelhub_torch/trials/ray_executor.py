"""The ``ray`` executor: each rung's trials as one Ray Tune run (a grid over the
trial indices, one CPU each). The trainable runs training.train_segment, which
reopens the repository by URL and commits there, and reports its result through
``ray.tune.report``; the driver reads the results back and builds the same rows as
the embedded executor. Ray's own files go to a temporary directory, never the cwd.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from modelhub_torch.errors import ModelHubError


def _ray() -> Any:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ModelHubError("the ray executor needs Ray Tune: pip install modelhub_torch[ray] "
                            "(or use the embedded executor)") from None
    return ray, tune


def _trainable(config: dict[str, Any], jobs: list[dict[str, Any]], url: str,
               options: dict[str, Any] | None) -> None:
    from ray import tune

    from modelhub_torch.trials.training import train_segment

    result = train_segment(url, storage_options=options, **jobs[config["index"]])
    tune.report({"result": json.dumps(result), "done": True})


def run_batch(url: str, options: dict[str, Any] | None, jobs: list[dict[str, Any]],
              workers: int) -> list[dict[str, Any]]:
    """Run ``jobs`` (train_segment's keyword arguments) as one Tune run; results in
    job order. ``ray.init`` is called only when Ray is not running yet."""
    ray, tune = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="modelhub-ray-") as tmp:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, jobs=jobs, url=url, options=options), {"cpu": 1}),
            param_space={"index": tune.grid_search(list(range(len(jobs))))},
            # workers > 1 caps the trials at a time; 1 (the default) leaves it to the cluster's CPUs
            tune_config=tune.TuneConfig(max_concurrent_trials=workers if workers > 1 else None, reuse_actors=True),
            run_config=tune.RunConfig(name="modelhub-evaluate", storage_path=tmp, verbose=0, log_to_file=False),
        )
        grid = tuner.fit()
        for r in grid:
            index = r.config["index"]
            raw = (r.metrics or {}).get("result")
            if raw is not None:
                results[index] = json.loads(raw)
            else:
                error = r.error or "the Ray trial ended without a result"
                results[index] = {"trial": jobs[index]["trial"].number, "error": f"ray: {error}"}
    return [r if r is not None else {"error": "ray: no result"} for r in results]


__all__ = ["run_batch"]
