"""Storage-plan optimizer for the Parameter Archival Store (ModelHub, ICDE 2017, §IV-B).

Pure module: no I/O, standard library only.

The *matrix storage graph* has one vertex per matrix plus the empty matrix ``"0"``.
An edge ``(0, m)`` stores ``m`` whole; an edge ``(a, b)`` stores ``b`` as a delta from
``a``. Every edge carries a storage cost and a recreation cost, and several edges may
join the same pair (storage tiers, codecs). A *plan* is a spanning arborescence rooted
at ``"0"``: every matrix gets exactly one incoming edge and there are no cycles.

* storage cost of a plan = sum of the chosen edges' storage costs;
* recreation cost of a matrix = sum of recreation costs on its path from ``"0"``;
* recreation cost of a group (a snapshot: matrices used together) = SUM of its
  members' costs (``scheme="independent"``) or their MAX (``scheme="parallel"``).

``solve`` minimises storage subject to ``recreation(group) <= budget[group]``:

``mst``     minimum spanning arborescence by storage (Chu-Liu/Edmonds); ignores budgets.
``spt``     shortest-path tree by recreation (Dijkstra); minimises every recreation cost.
``last``    LAST(ε) (Khuller et al.): DFS over the MST, a vertex whose recreation exceeds
            ``(1+ε)×`` its shortest-path cost is re-hung on its shortest path.
``pas-mt``  start from the MST; while a budget is violated, re-parent the vertex with the
            best ratio *gain / Δstorage* (gain = reduction of the violated groups'
            recreation, clipped at their budgets).
``pas-pt``  Prim-like growth from ``"0"`` by storage cost, refusing an edge that would make
            one of the vertex's groups infeasible (unplaced members counted at their
            shortest-path cost), re-parenting earlier vertices to the new one when that
            saves storage within budget; leftovers hang on their SPT edge and the plan is
            repaired with the PAS-MT heuristic.

Two additions beyond the paper's description, both for ``pas-*`` only: when PAS-MT has no
single re-parenting with positive gain while a budget is still violated, it re-hangs a
violating matrix's shortest path as one compound move (so the heuristics are feasible
whenever the SPT is); and, unless ``polish=False``, a final pass moves vertices to
cheaper-storage edges while every budget stays met. Infeasible budgets are not an error:
the least-violating plan found is returned with ``feasible=False`` (never worse than the
SPT's violation).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from modelhub_torch.errors import ModelHubError

__all__ = [
    "ALGORITHMS",
    "ROOT",
    "SCHEMES",
    "Edge",
    "Plan",
    "PlanError",
    "StorageGraph",
    "solve",
]

ROOT = "0"
SCHEMES = ("independent", "parallel")
ALGORITHMS = ("mst", "spt", "last", "pas-mt", "pas-pt")

_INF = math.inf


class PlanError(ModelHubError, ValueError):
    """Bad storage graph, budgets or solver arguments."""


class Edge(NamedTuple):
    """One way of storing ``dst``: whole (``src == "0"``) or as a delta from ``src``."""

    id: int
    src: str
    dst: str
    storage: float
    recreation: float


def _cost(value: object, what: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PlanError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(x) or x < 0 or math.isinf(x):
        raise PlanError(f"{what} must be a finite non-negative number, got {value!r}")
    return x


class StorageGraph:
    """Matrices (with the groups they belong to) and candidate storage edges."""

    def __init__(self) -> None:
        self._groups_of: dict[str, list[str]] = {}
        self._edges: list[Edge] = []

    # ------------------------------------------------------------- building
    def add_matrix(self, name: str, group: str | Iterable[str] | None = None) -> None:
        """Add matrix ``name`` (or add groups to it when it already exists)."""
        if not isinstance(name, str) or not name:
            raise PlanError(f"matrix name must be a non-empty string, got {name!r}")
        if name == ROOT:
            raise PlanError(f"{ROOT!r} is the empty matrix and cannot be added")
        if group is None:
            groups: list[str] = []
        elif isinstance(group, str):
            groups = [group]
        else:
            groups = list(group)
        for g in groups:
            if not isinstance(g, str) or not g:
                raise PlanError(f"group names must be non-empty strings, got {g!r}")
        have = self._groups_of.setdefault(name, [])
        for g in groups:
            if g not in have:
                have.append(g)

    def add_edge(self, src: str, dst: str, *, storage: float, recreation: float) -> int:
        """Add a way of storing ``dst`` from ``src`` (``"0"`` = whole); returns the edge id."""
        if dst == ROOT:
            raise PlanError(f"no edge may enter {ROOT!r} (edge {src!r} -> {dst!r})")
        for end in (src, dst):
            if end != ROOT and end not in self._groups_of:
                raise PlanError(f"edge {src!r} -> {dst!r} names unknown matrix {end!r}")
        if src == dst:
            raise PlanError(f"self-loop edge on {src!r}")
        s = _cost(storage, f"storage cost of edge {src!r} -> {dst!r}")
        r = _cost(recreation, f"recreation cost of edge {src!r} -> {dst!r}")
        eid = len(self._edges)
        self._edges.append(Edge(eid, src, dst, s, r))
        return eid

    # ------------------------------------------------------------- reading
    @property
    def matrices(self) -> tuple[str, ...]:
        return tuple(self._groups_of)

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(self._edges)

    def edge(self, eid: int) -> Edge:
        try:
            return self._edges[eid]
        except (IndexError, TypeError):
            raise PlanError(f"no edge with id {eid!r}") from None

    def groups_of(self, name: str) -> tuple[str, ...]:
        try:
            return tuple(self._groups_of[name])
        except KeyError:
            raise PlanError(f"unknown matrix {name!r}") from None

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Group name -> its member matrices (in insertion order)."""
        out: dict[str, list[str]] = {}
        for m, gs in self._groups_of.items():
            for g in gs:
                out.setdefault(g, []).append(m)
        return {g: tuple(ms) for g, ms in out.items()}

    def __len__(self) -> int:
        return len(self._groups_of)


@dataclass(frozen=True)
class Plan:
    """A storage plan: one chosen incoming edge per matrix, forming a tree under ``"0"``."""

    parent: dict[str, str]
    edge: dict[str, int]
    storage_cost: float
    matrix_recreation: dict[str, float]
    group_costs: dict[str, float]
    budgets: dict[str, float]
    scheme: str
    algorithm: str
    fell_back_to_spt: bool = False
    exceeded: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        over = {}
        for g, b in self.budgets.items():
            c = self.group_costs.get(g, 0.0)
            if c > b + _tol(b):
                over[g] = c - b
        object.__setattr__(self, "exceeded", over)

    def recreation_cost(self, group: str) -> float:
        """Recreation cost of ``group`` under the plan's scheme (sum or max)."""
        try:
            return self.group_costs[group]
        except KeyError:
            raise PlanError(f"unknown group {group!r}") from None

    @property
    def feasible(self) -> bool:
        return not self.exceeded

    @property
    def violation(self) -> float:
        """Total amount by which budgets are exceeded (0.0 when feasible)."""
        return float(sum(self.exceeded.values()))


def _tol(b: float) -> float:
    return 1e-9 * max(1.0, abs(b)) if b != _INF else 0.0


# ======================================================================== internals
class _Problem:
    """Integer-indexed view of a graph + budgets + scheme (vertex 0 is the root)."""

    def __init__(self, graph: StorageGraph, budgets: Mapping[str, float], scheme: str) -> None:
        self.names = [ROOT, *graph.matrices]
        index = {name: i for i, name in enumerate(self.names)}
        n = self.n = len(self.names)
        edges = graph.edges
        self.src = [index[e.src] for e in edges]
        self.dst = [index[e.dst] for e in edges]
        self.st = [e.storage for e in edges]
        self.rec = [e.recreation for e in edges]
        self.in_edges: list[list[int]] = [[] for _ in range(n)]
        self.out_edges: list[list[int]] = [[] for _ in range(n)]
        order = sorted(range(len(edges)), key=lambda i: (self.st[i], self.rec[i], i))
        for i in order:
            self.in_edges[self.dst[i]].append(i)
            self.out_edges[self.src[i]].append(i)
        gmap = graph.groups
        self.group_names = list(gmap)
        self.members = [[index[m] for m in gmap[g]] for g in self.group_names]
        self.vgroups: list[list[int]] = [[] for _ in range(n)]
        for gi, ms in enumerate(self.members):
            for m in ms:
                self.vgroups[m].append(gi)
        self.budget = [float(budgets.get(g, _INF)) for g in self.group_names]
        self.tol = [_tol(b) for b in self.budget]
        self.parallel = scheme == "parallel"
        self.constrained = [gi for gi, b in enumerate(self.budget) if b != _INF]
        self._check_reachable()
        self._dijkstra()

    def _check_reachable(self) -> None:
        seen = [False] * self.n
        seen[0] = True
        stack = [0]
        while stack:
            u = stack.pop()
            for e in self.out_edges[u]:
                v = self.dst[e]
                if not seen[v]:
                    seen[v] = True
                    stack.append(v)
        lost = [self.names[v] for v in range(self.n) if not seen[v]]
        if lost:
            shown = ", ".join(repr(x) for x in lost[:5])
            more = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
            raise PlanError(f"matrix {shown}{more} cannot be reached from {ROOT!r}")

    def _dijkstra(self) -> None:
        n = self.n
        dist = [_INF] * n
        via = [-1] * n
        done = [False] * n
        dist[0] = 0.0
        heap = [(0.0, 0.0, 0)]
        order: list[int] = []
        while heap:
            dv, _, v = heapq.heappop(heap)
            if done[v] or dv > dist[v]:
                continue
            done[v] = True
            order.append(v)
            for e in self.out_edges[v]:
                w = self.dst[e]
                if done[w]:
                    continue
                nd = dv + self.rec[e]
                if nd < dist[w] or (nd == dist[w] and self.st[e] < self.st[via[w]]):
                    dist[w] = nd
                    via[w] = e
                    heapq.heappush(heap, (nd, self.st[e], w))
        self.sp = dist
        self.spt_edge = via
        self.spt_order = order  # pop order: every vertex after its SPT parent

    def group_cost(self, vals: list[float], g: int) -> float:
        ms = self.members[g]
        if not ms:
            return 0.0
        if self.parallel:
            return max(vals[m] for m in ms)
        return math.fsum(vals[m] for m in ms)


class _Tree:
    """A (possibly partial) arborescence with per-vertex and per-group recreation costs.

    Unplaced vertices count at their shortest-path cost in group costs (a lower bound).
    """

    def __init__(self, P: _Problem, pe: list[int] | None = None) -> None:
        self.P = P
        n = P.n
        self.placed = [False] * n
        self.placed[0] = True
        self.pe = [-1] * n
        self.par = [-1] * n
        self.children: list[set[int]] = [set() for _ in range(n)]
        self.d = list(P.sp)  # unplaced: lower bound
        self.d[0] = 0.0
        if pe is not None:
            for v in range(1, n):
                self.pe[v] = pe[v]
                self.par[v] = P.src[pe[v]]
                self.children[self.par[v]].add(v)
                self.placed[v] = True
            for v in self.subtree(0)[1:]:
                self.d[v] = self.d[self.par[v]] + P.rec[self.pe[v]]
        self.gcost = [P.group_cost(self.d, g) for g in range(len(P.members))]

    # ----------------------------------------------------------- structure
    def subtree(self, v: int) -> list[int]:
        out = [v]
        i = 0
        ch = self.children
        while i < len(out):
            out.extend(ch[out[i]])
            i += 1
        return out

    def in_subtree(self, x: int, v: int) -> bool:
        """Is ``x`` ``v`` or one of its descendants?"""
        par = self.par
        while x > 0:
            if x == v:
                return True
            x = par[x]
        return x == v

    def attach(self, v: int, e: int) -> None:
        P = self.P
        u = P.src[e]
        self.placed[v] = True
        self.pe[v] = e
        self.par[v] = u
        self.children[u].add(v)
        self.d[v] = self.d[u] + P.rec[e]
        for g in P.vgroups[v]:
            self.gcost[g] = P.group_cost(self.d, g)

    def reparent(self, v: int, e: int) -> None:
        P = self.P
        u = P.src[e]
        self.children[self.par[v]].discard(v)
        self.children[u].add(v)
        self.par[v] = u
        self.pe[v] = e
        sub = self.subtree(v)
        d, par, pe, rec = self.d, self.par, self.pe, P.rec
        groups: set[int] = set()
        for x in sub:
            d[x] = d[par[x]] + rec[pe[x]]
            groups.update(P.vgroups[x])
        for g in groups:
            self.gcost[g] = P.group_cost(d, g)

    def shift_ok(self, v: int, delta: float) -> bool:
        """Would adding ``delta`` to every recreation in subtree(v) keep all budgets met?"""
        if delta <= 0:
            return True
        P = self.P
        inside = set(self.subtree(v))
        groups = {g for x in inside for g in P.vgroups[x] if P.budget[g] != _INF}
        d = self.d
        for g in groups:
            vals = [d[m] + delta if m in inside else d[m] for m in P.members[g]]
            new = max(vals) if P.parallel else math.fsum(vals)
            if new > P.budget[g] + P.tol[g]:
                return False
        return True

    # ----------------------------------------------------------- budgets
    def violated(self) -> list[int]:
        P = self.P
        return [g for g in P.constrained if self.gcost[g] > P.budget[g] + P.tol[g]]

    def violation(self) -> float:
        P = self.P
        return math.fsum(self.gcost[g] - P.budget[g] for g in self.violated())


# ------------------------------------------------------------------ MST (Edmonds)
def _edmonds(P: _Problem) -> list[int]:
    """Minimum spanning arborescence by storage cost (Chu-Liu/Edmonds, iterative)."""
    n, root = P.n, 0
    keep: dict[tuple[int, int], int] = {}
    for v in range(1, n):
        for e in P.in_edges[v]:  # sorted by (storage, recreation): first one wins
            keep.setdefault((P.src[e], v), e)
    cu = [P.src[e] for e in keep.values()]
    cv = [P.dst[e] for e in keep.values()]
    cw = [P.st[e] for e in keep.values()]
    cp = list(keep.values())
    levels = []
    while True:
        bw = [_INF] * n
        bi = [-1] * n
        for i in range(len(cu)):
            v = cv[i]
            if cw[i] < bw[v]:
                bw[v] = cw[i]
                bi[v] = i
        cyc = [-1] * n
        mark = [-1] * n
        nc = 0
        for s in range(n):
            x = s
            while x != root and mark[x] == -1:
                mark[x] = s
                x = cu[bi[x]]
            if x != root and mark[x] == s and cyc[x] == -1:
                y = x
                while True:
                    cyc[y] = nc
                    y = cu[bi[y]]
                    if y == x:
                        break
                nc += 1
        levels.append((cv, cp, bi, cyc, n))
        if nc == 0:
            sel = [bi[v] for v in range(n) if v != root]
            break
        newid = [0] * n
        k = nc
        for x in range(n):
            if cyc[x] >= 0:
                newid[x] = cyc[x]
            else:
                newid[x] = k
                k += 1
        nu: list[int] = []
        nv: list[int] = []
        nw: list[float] = []
        npv: list[int] = []
        pair: dict[tuple[int, int], int] = {}
        for i in range(len(cu)):
            a, b = newid[cu[i]], newid[cv[i]]
            if a == b:
                continue
            v = cv[i]
            w = cw[i] - bw[v] if cyc[v] >= 0 else cw[i]
            j = pair.get((a, b))
            if j is None:
                pair[(a, b)] = len(nu)
                nu.append(a)
                nv.append(b)
                nw.append(w)
                npv.append(i)
            elif w < nw[j]:
                nw[j] = w
                npv[j] = i
        cu, cv, cw, cp = nu, nv, nw, npv
        n, root = k, newid[root]
    # expand: indices at level L -> level L-1, breaking each cycle where it is entered
    for depth in range(len(levels) - 1, 0, -1):
        _, lp, _, _, _ = levels[depth]
        pv, _, pbi, pcyc, pn = levels[depth - 1]
        sel = [lp[i] for i in sel]
        covered = {pv[i] for i in sel}
        sel.extend(pbi[y] for y in range(pn) if pcyc[y] >= 0 and y not in covered)
    orig = levels[0][1]
    pe = [-1] * P.n
    for i in sel:
        e = orig[i]
        pe[P.dst[e]] = e
    return pe


# ------------------------------------------------------------------ LAST(ε)
def _last(P: _Problem, mst: list[int], eps: float) -> list[int]:
    t = _Tree(P, mst)
    preorder = []  # DFS preorder of the MST, as in the paper
    stack = [0]
    while stack:
        u = stack.pop()
        preorder.append(u)
        stack.extend(sorted(t.children[u], reverse=True))
    pe = list(mst)
    d = [0.0] * P.n
    fixed = [False] * P.n
    fixed[0] = True
    for v in preorder[1:]:
        if fixed[v]:
            continue
        d[v] = d[P.src[pe[v]]] + P.rec[pe[v]]
        if d[v] > (1.0 + eps) * P.sp[v] + _tol(P.sp[v]):
            x = v
            while not fixed[x]:
                pe[x] = P.spt_edge[x]
                d[x] = P.sp[x]
                fixed[x] = True
                x = P.src[pe[x]]
    return pe


# ------------------------------------------------------------------ PAS-MT
def _best_single_move(t: _Tree, viol: list[int]) -> tuple[int, int] | None:
    P = t.P
    d, par, pe, gcost = t.d, t.par, t.pe, t.gcost
    parallel = P.parallel
    excess = {g: gcost[g] - P.budget[g] for g in viol}
    info: dict[int, dict[int, list[float]]] = {}
    anc: dict[int, set[int]] = {}
    for g in viol:
        for m in P.members[g]:
            dm = d[m]
            x = m
            chain = []
            while x != 0:
                slot = info.get(x)
                if slot is None:
                    slot = info[x] = {}
                ent = slot.get(g)
                if ent is None:
                    slot[g] = [1, dm]
                else:
                    ent[0] += 1
                    if dm > ent[1]:
                        ent[1] = dm
                if parallel:
                    chain.append(x)
                x = par[x]
            if parallel and m not in anc:
                anc[m] = set(chain)
    order = {}
    if parallel:
        order = {g: sorted(P.members[g], key=lambda m: -d[m]) for g in viol}
    best: tuple[int, int] | None = None
    best_ratio = 0.0
    src, rec, st = P.src, P.rec, P.st
    for v, slot in info.items():
        outmax: dict[int, float] = {}
        if parallel:
            for g in slot:
                om = -_INF
                for m in order[g]:
                    if v not in anc[m]:
                        om = d[m]
                        break
                outmax[g] = om
        dv = d[v]
        cur_s = st[pe[v]]
        for e in P.in_edges[v]:
            if e == pe[v]:
                continue
            delta = d[src[e]] + rec[e] - dv
            if delta >= 0:
                continue
            gain = 0.0
            if parallel:
                for g, (_, inmax) in slot.items():
                    red = gcost[g] - max(outmax[g], inmax + delta)
                    if red > 0:
                        gain += min(excess[g], red)
            else:
                for g, (cnt, _) in slot.items():
                    gain += min(excess[g], -delta * cnt)
            if gain <= 0:
                continue
            ds = st[e] - cur_s
            if ds <= 0:
                if not t.in_subtree(src[e], v):
                    return (v, e)
            elif gain / ds > best_ratio and not t.in_subtree(src[e], v):
                best_ratio = gain / ds
                best = (v, e)
    return best


def _best_compound_move(t: _Tree, viol: list[int]) -> list[tuple[int, int]] | None:
    """Re-hang a violating matrix's whole shortest path (used when no single move helps)."""
    P = t.P
    src, rec, st, pe = P.src, P.rec, P.st, t.pe
    cands: list[int] = []
    seen: set[int] = set()
    for g in viol:
        for m in P.members[g]:
            if m not in seen and t.d[m] > P.sp[m] + _tol(P.sp[m]):
                seen.add(m)
                cands.append(m)
    best: list[tuple[int, int]] | None = None
    best_ratio = -1.0
    for m in cands:
        path = []
        x = m
        while x != 0:
            path.append(x)
            x = src[P.spt_edge[x]]
        path.reverse()
        switched: dict[int, int] = {}
        memo: dict[int, float] = {0: 0.0}

        def dnew(
            x: int, switched: dict[int, int] = switched, memo: dict[int, float] = memo
        ) -> float:
            chain = []
            while x not in memo:
                chain.append(x)
                if len(chain) > P.n:
                    raise RuntimeError("cycle")  # pragma: no cover - guarded by theory
                x = src[switched.get(x, pe[x])]
            val = memo[x]
            for y in reversed(chain):
                val += rec[switched.get(y, pe[y])]
                memo[y] = val
            return val

        try:
            for p in path:
                if pe[p] != P.spt_edge[p] and dnew(p) > P.sp[p] + _tol(P.sp[p]):
                    switched[p] = P.spt_edge[p]
                    memo.clear()  # p's subtree moved: recompute lazily
                    memo[0] = 0.0
            if not switched:
                continue
            memo.clear()
            memo[0] = 0.0
            gain = 0.0
            for g in viol:
                vals = {mm: dnew(mm) for mm in P.members[g]}
                new = max(vals.values()) if P.parallel else math.fsum(vals.values())
                red = t.gcost[g] - new
                if red > 0:
                    gain += min(t.gcost[g] - P.budget[g], red)
        except RuntimeError:  # pragma: no cover
            continue
        if gain <= 0:
            continue
        ds = math.fsum(st[e] - st[pe[p]] for p, e in switched.items())
        ratio = _INF if ds <= 0 else gain / ds
        if ratio > best_ratio:
            best_ratio = ratio
            best = list(switched.items())
    return best


def _repair(t: _Tree) -> None:
    """PAS-MT: greedy re-parenting until every budget is met or nothing helps."""
    limit = 50 * t.P.n + 1000
    for _ in range(limit):
        viol = t.violated()
        if not viol:
            return
        move = _best_single_move(t, viol)
        if move is not None:
            t.reparent(*move)
            continue
        moves = _best_compound_move(t, viol)
        if not moves:
            return
        for v, e in moves:
            if not t.in_subtree(t.P.src[e], v):
                t.reparent(v, e)


def _polish(t: _Tree) -> None:
    """Move vertices to cheaper-storage edges while no budget becomes violated."""
    P = t.P
    src, st, rec = P.src, P.st, P.rec
    for _ in range(20):
        changed = False
        for v in range(1, P.n):
            cur = st[t.pe[v]]
            for e in P.in_edges[v]:
                if st[e] >= cur:
                    break
                u = src[e]
                if t.in_subtree(u, v):
                    continue
                delta = t.d[u] + rec[e] - t.d[v]
                if t.shift_ok(v, delta):
                    t.reparent(v, e)
                    changed = True
                    break
        if not changed:
            return


# ------------------------------------------------------------------ PAS-PT
def _pas_pt(P: _Problem) -> _Tree:
    t = _Tree(P)
    src, dst, st, rec = P.src, P.dst, P.st, P.rec
    heap = [(st[e], rec[e], e) for e in P.out_edges[0]]
    heapq.heapify(heap)
    d, placed = t.d, t.placed
    while heap:
        _, _, e = heapq.heappop(heap)
        v = dst[e]
        if placed[v]:
            continue
        dv = d[src[e]] + rec[e]
        ok = True
        for g in P.vgroups[v]:
            if P.budget[g] == _INF:
                continue
            old = d[v]
            d[v] = dv
            new = P.group_cost(d, g)
            d[v] = old
            if new > P.budget[g] + P.tol[g]:
                ok = False
                break
        if not ok:
            continue
        t.attach(v, e)
        for e2 in P.out_edges[v]:
            w = dst[e2]
            if not placed[w]:
                heapq.heappush(heap, (st[e2], rec[e2], e2))
            elif (
                st[e2] < st[t.pe[w]]
                and not t.in_subtree(v, w)
                and t.shift_ok(w, dv + rec[e2] - d[w])
            ):
                t.reparent(w, e2)
    for v in P.spt_order:
        if not placed[v]:
            t.attach(v, P.spt_edge[v])
    return t


# ------------------------------------------------------------------ entry point
def solve(
    graph: StorageGraph,
    budgets: Mapping[str, float] | None = None,
    scheme: str = "independent",
    algorithm: str = "pas-pt",
    *,
    epsilon: float = 1.0,
    polish: bool = True,
) -> Plan:
    """Choose one incoming edge per matrix: minimise storage within recreation budgets."""
    if scheme not in SCHEMES:
        raise PlanError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    if algorithm not in ALGORITHMS:
        raise PlanError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    if not isinstance(graph, StorageGraph):
        raise PlanError(f"graph must be a StorageGraph, got {type(graph).__name__}")
    budgets = dict(budgets or {})
    known = set(graph.groups)
    for g, b in budgets.items():
        if g not in known:
            raise PlanError(f"budget given for unknown group {g!r}")
        budgets[g] = _cost(b, f"budget of group {g!r}")
    eps = _cost(epsilon, "epsilon")
    P = _Problem(graph, budgets, scheme)

    fell_back = False
    if algorithm == "spt":
        pe = P.spt_edge
    elif algorithm == "mst":
        pe = _edmonds(P)
    elif algorithm == "last":
        pe = _last(P, _edmonds(P), eps)
    else:
        t = _Tree(P, _edmonds(P)) if algorithm == "pas-mt" else _pas_pt(P)
        _repair(t)
        if polish:
            _polish(t)
        pe = t.pe
        if t.violated():
            spt = _Tree(P, P.spt_edge)
            if spt.violation() < t.violation() - 1e-12:
                pe = P.spt_edge
                fell_back = True
    return _make_plan(P, graph, pe, budgets, scheme, algorithm, fell_back)


def _make_plan(
    P: _Problem,
    graph: StorageGraph,
    pe: list[int],
    budgets: dict[str, float],
    scheme: str,
    algorithm: str,
    fell_back: bool,
) -> Plan:
    t = _Tree(P, pe)
    names = P.names
    parent = {names[v]: names[t.par[v]] for v in range(1, P.n)}
    edge = {names[v]: pe[v] for v in range(1, P.n)}
    storage = math.fsum(P.st[pe[v]] for v in range(1, P.n))
    mrec = {names[v]: t.d[v] for v in range(1, P.n)}
    gcosts = {g: t.gcost[i] for i, g in enumerate(P.group_names)}
    return Plan(
        parent=parent,
        edge=edge,
        storage_cost=storage,
        matrix_recreation=mrec,
        group_costs=gcosts,
        budgets=budgets,
        scheme=scheme,
        algorithm=algorithm,
        fell_back_to_spt=fell_back,
    )
