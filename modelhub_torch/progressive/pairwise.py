"""The pairwise rule: bound the logit *differences* through the final ``nn.Linear``.

``l_a − l_b = (W_a − W_b)·h + (b_a − b_b)`` with one interval ``h`` for the penultimate
activations: the uncertainty that ``h`` shares between two logits cancels instead of
counting twice. Each difference is widened by both logits' float32 rounding (each within
γ_{n+1}·(|W|·|h| + |b|)) and our float64 rounding (docs/PROGRESSIVE.md).
"""

from __future__ import annotations

import torch

from modelhub_torch.progressive.intervals import Bounds, LinearHead
from modelhub_torch.progressive.rounding import TINY32, dot_eps
from modelhub_torch.progressive.topk import needed_pairs

# a handful of float64 [rows, classes, fan-in] arrays live at once: ~32 MiB each
CHUNK_ELEMS = 1 << 22


def applies(bounds: Bounds, head: LinearHead | None) -> bool:
    """Whether the network ends in a Linear on a 2-d input, so the rule can run."""
    return head is not None and bounds.head_input is not None and bounds.head_input.lo.dim() == 2


def decide_pairwise(
    bounds: Bounds, head: LinearHead, rows: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the batch rows ``rows``: which the differences decide (classes ranked by the
    centres of their bounds), and that ordered top-k."""
    h = bounds.head_input
    assert h is not None
    w_lo, w_hi = bounds.weights[head.weight]
    if head.bias:
        b_lo, b_hi = bounds.weights[head.bias]
    else:
        b_lo, b_hi = (torch.zeros(w_lo.shape[0], dtype=torch.float64),) * 2
    lo, hi = bounds.lo, bounds.hi
    centre = ((lo + hi) / 2)[rows]
    order = torch.argsort(centre, dim=1, descending=True, stable=True)
    wmax = torch.maximum(w_lo.abs(), w_hi.abs())
    bmax = torch.maximum(b_lo.abs(), b_hi.abs())
    n = head.fan_in
    ok = torch.zeros(rows.numel(), dtype=torch.bool)
    step = max(1, CHUNK_ELEMS // max(1, lo.shape[1] * n))
    for start in range(0, rows.numel(), step):
        part = slice(start, start + step)
        batch = rows[part]
        ok[part] = _differences_positive(
            h.lo[batch], h.hi[batch], order[part], k, (w_lo, w_hi, wmax), (b_lo, b_hi, bmax), n, bounds.rounding
        )
    return ok, order[:, :k]


def _differences_positive(
    h_lo: torch.Tensor,
    h_hi: torch.Tensor,
    order: torch.Tensor,
    k: int,
    weight: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n: int,
    rounding: bool,
) -> torch.Tensor:
    """Rows where every needed difference l_a − l_b (a ranked above b) is > 0: the
    k candidates in order, and the k-th above every other class."""
    w_lo, w_hi, wmax = weight
    b_lo, b_hi, bmax = bias
    a_idx, b_idx = needed_pairs(order, k)  # [rows, c-1] pairs (a, b)
    d_lo = w_lo[a_idx] - w_hi[b_idx]  # [rows, c-1, n], exact or one rounding (widened below)
    d_hi = w_hi[a_idx] - w_lo[b_idx]
    hl, hh = h_lo.unsqueeze(1), h_hi.unsqueeze(1)
    if bool((h_lo >= 0).all()):
        low = (d_lo.clamp(min=0) * hl - (-d_lo).clamp(min=0) * hh).sum(-1)
    else:
        hc, hr = (hl + hh) / 2, (hh - hl) / 2
        dc, dr = (d_lo + d_hi) / 2, (d_hi - d_lo) / 2
        low = (dc * hc).sum(-1) - (dc.abs() * hr + dr * torch.maximum(hl.abs(), hh.abs())).sum(-1)
    low = low + (b_lo[a_idx] - b_hi[b_idx])
    hmax = torch.maximum(h_lo.abs(), h_hi.abs()).unsqueeze(1)
    s_a = (wmax[a_idx] * hmax).sum(-1) + bmax[a_idx]  # bounds |W_a|·|h| + |b_a|
    s_b = (wmax[b_idx] * hmax).sum(-1) + bmax[b_idx]
    # float32 rounding of both logits, float64 rounding of this sum of 2n+2 terms
    # (each difference term carries one more rounding: hence 2·eps on its size)
    err = (s_a + s_b) * (2.0 * dot_eps(2 * n + 2)) + 2 * (n + 2) * TINY32
    if not rounding:
        err = torch.zeros_like(err)
    return (low - err > 0).all(dim=1)
