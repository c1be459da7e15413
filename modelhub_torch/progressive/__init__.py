"""Progressive (exact) inference: predict from the high-order byte planes of stored
weights and read the low planes only for inputs the bounds cannot decide.

Modules, lowest first (each imports only those above it in this list):

- ``rounding.py``: the float32/float64 error model every bound is widened by;
- ``weights.py``: which bits the first planes give, and each weight's interval;
- ``topk.py``: when bounds force the top-k (and which class pairs must be apart);
- ``context.py``: interval tensors and the per-call state of a pass;
- ``layers.py``, ``activations.py``: the interval bound of each supported layer;
- ``plan.py``: a traced module turned into one handler per node, or refused;
- ``intervals.py``: :class:`IntervalNet`, whose ``bounds()`` returns a :class:`Bounds`;
- ``pairwise.py``: the rule on logit differences through the final ``nn.Linear``;
- ``forms.py``, ``affine.py``: affine forms and the pass that decides with them;
- ``decision.py``: interval rule → pairwise rule → affine pass, in that order;
- ``planes.py``: stored weights read plane by plane, every byte counted;
- ``model.py``: :class:`ProgressiveModel` runs the tiers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressiveModel", "ProgressiveResult", "progressive_predict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from modelhub_torch.progressive import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
