"""``ProgressiveModel``: top-k predictions from the high-order planes of stored weights.

Tier by tier (1, 2, 3 planes for float32), weights known to their top planes are
intervals; the interval network (``intervals.py``) bounds every logit, and an input
whose top-k those bounds decide (``decision.py``) is answered there. Inputs still undecided move to the
next tier, which first fetches one more plane of every weight — lazily, only when an
undecided input exists, and each plane once. The last tier is the ordinary forward
pass with the exact weights, so every answer equals ``module(x).topk(k)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from modelhub_torch.errors import ModelHubError
from modelhub_torch.progressive.decision import decide
from modelhub_torch.progressive.intervals import IntervalNet
from modelhub_torch.progressive.planes import PlaneReader
from modelhub_torch.progressive.weights import known_mask, weight_bounds

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository


@dataclass(frozen=True)
class ProgressiveResult:
    topk: torch.Tensor  # LongTensor [N, k], equal to module(x).topk(k).indices
    planes: torch.Tensor  # LongTensor [N]: the tier that decided each input
    bytes_read: int  # bytes read from the store for this model so far
    bytes_full: int  # bytes a full load of the weights reads

    def share_by_tier(self) -> dict[int, float]:
        """Fraction of inputs decided at each tier."""
        n = max(1, int(self.planes.numel()))
        return {int(t): float((self.planes == t).sum()) / n for t in torch.unique(self.planes)}


class ProgressiveModel:
    """A stored version evaluated progressively; ``module`` gives the architecture
    (its own weights are never used or changed)."""

    CHOICE_SAMPLE = 128  # undecided inputs used to pick the next layer to sharpen
    AFFINE_EARLY_ROWS = 64  # below this many undecided inputs the affine pass runs after every layer

    def __init__(self, module: torch.nn.Module, repo: Repository | str, ref: str, start_planes: int = 1):
        from modelhub_torch.repository import Repository

        if module.training:
            module = copy.deepcopy(module).eval()  # progressive answers are eval-mode answers
        self.net = IntervalNet(module)  # refuses unsupported layers before any read
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.ref = ref
        self.store = PlaneReader(self.repo, ref, self.net.param_names)
        widths = {t.width for t in self.store.tensors.values() if t.separable}
        self.tiers = max(widths | {1})  # planes of the widest float weight (4 for float32)
        if not 1 <= start_planes <= self.tiers:
            raise ModelHubError(f"start_planes must be between 1 and {self.tiers}, got {start_planes}")
        self.start_planes = start_planes
        self._module = module
        self._exact: torch.nn.Module | None = None
        self._bounds: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fetch(start_planes)

    @property
    def bytes_read(self) -> int:
        return self.store.bytes_read

    @property
    def bytes_full(self) -> int:
        return self.store.bytes_full

    def _fetch(self, planes: int) -> None:
        for name in self.store.tensors:
            self.store.fetch(name, planes)

    def _weights(self, planes: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every weight's bounds with what is known of it at this tier; a tensor's bounds
        change only when a plane of it is read, so they are computed once per plane."""
        out = {}
        for name, t in self.store.tensors.items():
            known = t.width if (t.exact is not None or not t.separable) else min(planes, t.known)
            key = (name, known)
            if key not in self._bounds:
                if known == t.width:
                    w = self.store.tensor(name).to(torch.float64)
                    self._bounds[key] = (w, w)
                else:
                    lo, hi = weight_bounds(self.store.bits(name), known_mask(t.dtype, known, t.layout), t.dtype)
                    self._bounds[key] = (torch.from_numpy(lo).reshape(t.shape), torch.from_numpy(hi).reshape(t.shape))
            out[name] = self._bounds[key]
        return out

    def _exact_module(self) -> torch.nn.Module:
        if self._exact is None:
            self._fetch(self.tiers)
            exact = copy.deepcopy(self._module).eval()
            state = exact.state_dict()
            for name in self.store.tensors:
                state[name] = self.store.tensor(name)
            exact.load_state_dict(state)
            self._exact = exact
        return self._exact

    @torch.no_grad()
    def predict(self, x: torch.Tensor, k: int = 1, strategy: str = "layer") -> ProgressiveResult:
        """Top-k of every input of the batch ``x``. ``strategy``: how a tier's plane is
        fetched once inputs are undecided — ``"layer"`` (default) one layer at a time,
        the layer whose sharper weights would narrow the undecided inputs' bounds most
        first, deciding again after each; ``"all"`` every weight at once."""
        if strategy not in ("layer", "all"):
            raise ModelHubError(f"strategy must be 'layer' or 'all', got {strategy!r}")
        n = x.shape[0]
        topk = torch.full((n, k), -1, dtype=torch.long)
        planes = torch.zeros(n, dtype=torch.long)
        todo = torch.arange(n)
        for tier in range(self.start_planes, self.tiers + 1):
            if todo.numel() == 0:
                break
            if tier == self.tiers:
                out = self._exact_module()(x[todo])
                topk[todo] = out.topk(k, dim=1).indices
                planes[todo] = tier
                break
            if strategy == "all":
                self._fetch(tier)
            while True:
                # the costly affine pass once the tier is complete, or for a few inputs
                complete = all(t.known >= tier for t in self.store.tensors.values())
                affine = complete or todo.numel() <= self.AFFINE_EARLY_ROWS
                decided, idx = decide(self.net, x[todo], self._weights(tier), k, affine=affine)
                topk[todo[decided]] = idx[decided]
                planes[todo[decided]] = tier
                todo = todo[~decided]
                group = self._next_group(x[todo], tier) if todo.numel() else None
                if group is None:
                    break
                for name in group:
                    self.store.fetch(name, tier)
        return ProgressiveResult(topk, planes, self.bytes_read, self.bytes_full)

    def _groups(self) -> dict[str, list[str]]:
        """Weights by layer (the module that owns them)."""
        out: dict[str, list[str]] = {}
        for name in self.store.tensors:
            out.setdefault(name.rpartition(".")[0], []).append(name)
        return out

    def _next_group(self, x: torch.Tensor, tier: int) -> list[str] | None:
        """The layer still missing plane ``tier`` whose sharper weights would narrow
        the logit bounds of ``x`` most (estimated by shrinking its radius as one more
        plane would, around the current centre; a choice, not a bound)."""
        waiting = {g: names for g, names in self._groups().items()
                   if any(self.store.tensors[n].known < tier for n in names)}
        if len(waiting) <= 1:
            return next(iter(waiting.values()), None)
        weights = self._weights(tier)
        x = x[: self.CHOICE_SAMPLE]  # a choice needs a sample, not every undecided input
        best, best_width = next(iter(waiting.values())), float("inf")
        for names in waiting.values():
            trial = dict(weights)
            for name in names:
                lo, hi = weights[name]
                mid, rad = (lo + hi) / 2, (hi - lo) / 2 / 256
                trial[name] = (mid - rad, mid + rad)
            bounds = self.net.bounds(x, trial)
            width = float(torch.nan_to_num(bounds.hi - bounds.lo, nan=1e30, posinf=1e30).clamp_max(1e30).sum())
            if width < best_width:
                best, best_width = names, width
        return best


def progressive_predict(
    module: torch.nn.Module, repo: Repository | str, ref: str, x: torch.Tensor, k: int = 1, start_planes: int = 1
) -> ProgressiveResult:
    """One-shot :meth:`ProgressiveModel.predict`."""
    return ProgressiveModel(module, repo, ref, start_planes=start_planes).predict(x, k=k)
