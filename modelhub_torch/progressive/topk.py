"""When bounds force the top-k: the rule every pass ends with, and the class pairs
that an ordered top-k needs apart (shared by the pairwise and affine rules)."""

from __future__ import annotations

import torch

__all__ = ["decide_topk", "needed_pairs"]


def needed_pairs(order: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class pairs (a, b), a ranked above b, that an ordered top-k needs apart: each
    of the first k above the next, the k-th above every class outside ([rows, c−1] each)."""
    rows, c = order.shape
    a_idx = torch.cat([order[:, : k - 1], order[:, k - 1 : k].expand(rows, c - k)], dim=1)
    b_idx = torch.cat([order[:, 1:k], order[:, k:]], dim=1)
    return a_idx, b_idx


def decide_topk(lo: torch.Tensor, hi: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose ordered top-k the bounds force, and that top-k.

    With classes sorted by lower bound, input i is decided when lo of the j-th class
    exceeds hi of the (j+1)-th for j < k, and lo of the k-th exceeds hi of every class
    outside the top k (strictly): then every value inside the bounds — the float32
    output included — has exactly this ordered top-k, ties impossible. Undecided rows
    hold −1.
    """
    if lo.shape != hi.shape or lo.dim() != 2:
        raise ValueError("lo and hi must be [N, C] tensors of the same shape")
    c = lo.shape[1]
    if not 1 <= k <= c:
        raise ValueError(f"k must be between 1 and {c}, got {k}")
    order = torch.argsort(lo, dim=1, descending=True, stable=True)
    top = order[:, :k]
    lo_top = lo.gather(1, top)
    hi_sorted = hi.gather(1, order)
    decided = (lo_top[:, : k - 1] > hi_sorted[:, 1:k]).all(dim=1)
    if k < c:
        decided &= lo_top[:, k - 1] > hi_sorted[:, k:].amax(dim=1)
    decided &= ~(torch.isnan(lo).any(dim=1) | torch.isnan(hi).any(dim=1))
    topk = torch.where(decided.unsqueeze(1), top, torch.full_like(top, -1))
    return decided, topk
