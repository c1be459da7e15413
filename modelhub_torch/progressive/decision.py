"""The combined decision: interval rule → pairwise rule → affine pass.

Each rule is sound on its own, so an input is answered when any of them decides it;
the later, costlier rules run only on the inputs the earlier ones leave open. This is
the one place that order and the hand-over between the rules are written down.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from modelhub_torch.progressive.affine import AffineNet, within_reach
from modelhub_torch.progressive.intervals import IntervalNet
from modelhub_torch.progressive.pairwise import applies, decide_pairwise
from modelhub_torch.progressive.topk import decide_topk

__all__ = ["decide"]


@torch.no_grad()
def decide(
    net: IntervalNet,
    x: torch.Tensor,
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    k: int,
    affine: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of ``x`` whose ordered top-k is forced by the weights' bounds, and that
    top-k (−1 where undecided); every decided answer equals ``module(x).topk(k)``.

    1. the interval rule: the bounds of the logits apart (:func:`decide_topk`);
    2. the pairwise rule, when the network ends in ``nn.Linear``: the logit differences
       bounded directly (``pairwise.py``);
    3. the affine pass on the rows still open whose bounds are within its reach
       (``affine.py``). ``affine=False`` skips it (cheaper when sharper weights are
       about to arrive anyway); the unsound test mode never runs it.
    """
    bounds = net.bounds(x, weights)
    decided, topk = decide_topk(bounds.lo, bounds.hi, k)
    if applies(bounds, net.head) and not bool(decided.all()):
        rows = (~decided & ~bounds.undecidable).nonzero().flatten()
        if rows.numel():
            assert net.head is not None
            _accept(decided, topk, rows, *decide_pairwise(bounds, net.head, rows, k))
    if affine and bounds.rounding:
        rows = (~decided & ~bounds.undecidable & within_reach(bounds.lo, bounds.hi, k)).nonzero().flatten()
        if rows.numel():
            _accept(decided, topk, rows, *AffineNet(net).decide(x[rows], bounds.weights, k))
    return decided, topk


def _accept(decided: torch.Tensor, topk: torch.Tensor, rows: torch.Tensor, ok: torch.Tensor, top: torch.Tensor) -> None:
    """Record a rule's answers for the batch rows ``rows`` where it decided (``ok``)."""
    decided[rows[ok]] = True
    topk[rows[ok]] = top[ok]
