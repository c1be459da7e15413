"""Storage-plan optimizer (pas/planner.py): hand-made graphs, exhaustive optimum, properties."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhub_torch.errors import ModelHubError
from modelhub_torch.pas.planner import PlanError, StorageGraph, solve

ALGOS = ("mst", "spt", "last", "pas-mt", "pas-pt")
SCHEMES = ("independent", "parallel")
TOL = 1e-7


def _agg(vals, scheme):
    vals = list(vals)
    if not vals:
        return 0.0
    return max(vals) if scheme == "parallel" else math.fsum(vals)


def check_plan(g: StorageGraph, plan, budgets, scheme):
    """Valid arborescence, and every reported cost adds up from the chosen edges."""
    mats = set(g.matrices)
    assert set(plan.parent) == mats and set(plan.edge) == mats
    for m in mats:
        e = g.edge(plan.edge[m])
        assert e.dst == m and e.src == plan.parent[m]
    rec = {}
    for m in mats:  # walk to the root: reachable, no cycle
        path, x = [], m
        while x != "0":
            assert x not in path, f"cycle through {x}"
            path.append(x)
            x = plan.parent[x]
        rec[m] = math.fsum(g.edge(plan.edge[y]).recreation for y in path)
    assert plan.storage_cost == pytest.approx(
        math.fsum(g.edge(plan.edge[m]).storage for m in mats), abs=TOL
    )
    for m in mats:
        assert plan.matrix_recreation[m] == pytest.approx(rec[m], abs=TOL)
    over = 0.0
    for grp, members in g.groups.items():
        cost = _agg((rec[m] for m in members), scheme)
        assert plan.recreation_cost(grp) == pytest.approx(cost, abs=TOL)
        if grp in budgets and cost > budgets[grp] + TOL:
            over += cost - budgets[grp]
    assert plan.feasible == (over == 0.0)
    assert plan.violation == pytest.approx(over, abs=1e-6)
    return rec


# ------------------------------------------------------------------ hand-made graphs
def chain_graph():
    """a -> b -> c as cheap deltas; every matrix can also be materialised."""
    g = StorageGraph()
    for m in "abc":
        g.add_matrix(m, group="s")
    g.add_matrix("c", group="t")  # a second group
    g.add_matrix("b", group="u")
    g.add_matrix("c", group="u")
    g.add_edge("0", "a", storage=10, recreation=1)
    g.add_edge("a", "b", storage=1, recreation=2)
    g.add_edge("b", "c", storage=1, recreation=2)
    g.add_edge("0", "b", storage=10, recreation=1)
    g.add_edge("0", "c", storage=10, recreation=1)
    g.add_edge("a", "c", storage=3, recreation=2)
    return g


def test_mst_picks_cheap_deltas_and_spt_materialises():
    g = chain_graph()
    mst = solve(g, algorithm="mst")
    assert mst.parent == {"a": "0", "b": "a", "c": "b"}
    assert mst.storage_cost == 12.0
    assert mst.matrix_recreation == {"a": 1.0, "b": 3.0, "c": 5.0}
    spt = solve(g, algorithm="spt")
    assert spt.parent == {"a": "0", "b": "0", "c": "0"}
    assert spt.storage_cost == 30.0
    assert spt.recreation_cost("s") == 3.0
    assert mst.feasible and spt.feasible  # no budgets


@pytest.mark.parametrize("algo", ["pas-mt", "pas-pt"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_budget_forces_one_reparent(algo, scheme):
    g = chain_graph()
    plan = solve(g, {"t": 3.0}, scheme, algo)
    assert plan.parent == {"a": "0", "b": "a", "c": "a"}
    assert plan.edge["c"] == 5
    assert plan.storage_cost == 14.0
    assert plan.recreation_cost("t") == 3.0
    assert plan.feasible and plan.violation == 0.0
    check_plan(g, plan, {"t": 3.0}, scheme)


@pytest.mark.parametrize("algo", ["pas-mt", "pas-pt"])
def test_parallel_vs_independent(algo):
    g = chain_graph()
    budgets = {"u": 6.0}  # group u = {b, c}: MST gives b=3, c=5 -> sum 8, max 5
    par = solve(g, budgets, "parallel", algo)
    ind = solve(g, budgets, "independent", algo)
    assert par.parent == {"a": "0", "b": "a", "c": "b"} and par.storage_cost == 12.0
    assert par.recreation_cost("u") == 5.0
    assert ind.parent == {"a": "0", "b": "a", "c": "a"} and ind.storage_cost == 14.0
    assert ind.recreation_cost("u") == 6.0
    assert par.feasible and ind.feasible


def test_parallel_edges_tiers():
    g = StorageGraph()
    g.add_matrix("m", group="s")
    cold = g.add_edge("0", "m", storage=1.0, recreation=10.0)
    hot = g.add_edge("0", "m", storage=5.0, recreation=1.0)
    assert (cold, hot) == (0, 1)
    assert solve(g, algorithm="mst").edge["m"] == cold
    assert solve(g, algorithm="spt").edge["m"] == hot
    for algo in ("pas-mt", "pas-pt"):
        assert solve(g, {"s": 20.0}, algorithm=algo).edge["m"] == cold
        plan = solve(g, {"s": 2.0}, algorithm=algo)
        assert plan.edge["m"] == hot and plan.parent["m"] == "0"
        assert plan.storage_cost == 5.0 and plan.feasible


def test_last_epsilon():
    g = chain_graph()
    # shortest paths are all 1; MST gives b=3 (> 2), c=5 (> 2) with ε=1
    assert solve(g, algorithm="last", epsilon=1.0).parent == {"a": "0", "b": "0", "c": "0"}
    assert solve(g, algorithm="last", epsilon=4.0).parent == {"a": "0", "b": "a", "c": "b"}
    # ε=2: b=3 fits (<= 3); c=5 does not -> c re-hung on its shortest path
    assert solve(g, algorithm="last", epsilon=2.0).parent == {"a": "0", "b": "a", "c": "0"}


def test_mst_contracts_cycles():
    """Cheapest in-edges form a cycle a<->b: Edmonds must break it at the right place."""
    g = StorageGraph()
    for m in "abc":
        g.add_matrix(m)
    g.add_edge("0", "a", storage=10, recreation=1)
    g.add_edge("0", "b", storage=12, recreation=1)
    g.add_edge("0", "c", storage=3, recreation=1)
    g.add_edge("a", "b", storage=1, recreation=1)
    g.add_edge("b", "a", storage=1, recreation=1)
    g.add_edge("c", "b", storage=4, recreation=1)
    plan = solve(g, algorithm="mst")
    # options: 0->c(3) + c->b(4) + b->a(1) = 8 is the optimum
    assert plan.storage_cost == 8.0
    assert plan.parent == {"a": "b", "b": "c", "c": "0"}


def test_infeasible_budgets_return_least_violating_plan():
    g = chain_graph()
    budgets = {"s": 2.0, "t": 0.5}  # SPT gives s=3, t=1: impossible
    spt = solve(g, budgets, algorithm="spt")
    for algo in ("pas-mt", "pas-pt"):
        plan = solve(g, budgets, algorithm=algo)
        assert not plan.feasible
        assert plan.violation <= spt.violation + 1e-9
        assert plan.violation == pytest.approx(1.0 + 0.5)
        check_plan(g, plan, budgets, "independent")


def test_groups_and_membership():
    g = StorageGraph()
    g.add_matrix("x", group=["s1", "s2"])
    g.add_matrix("y", group="s2")
    g.add_matrix("x", group="s3")
    g.add_matrix("z")
    assert g.groups == {"s1": ("x",), "s2": ("x", "y"), "s3": ("x",)}
    assert g.groups_of("x") == ("s1", "s2", "s3")
    for m in "xyz":
        g.add_edge("0", m, storage=1, recreation=2)
    plan = solve(g, {"s2": 4.0}, "independent", "pas-pt")
    assert plan.recreation_cost("s2") == 4.0 and plan.feasible
    assert solve(g, {"s2": 4.0}, "parallel").recreation_cost("s2") == 2.0
    with pytest.raises(PlanError):
        plan.recreation_cost("nope")


def test_errors():
    assert issubclass(PlanError, ModelHubError) and issubclass(PlanError, ValueError)
    g = StorageGraph()
    g.add_matrix("a", group="s")
    g.add_matrix("b", group="s")
    g.add_edge("0", "a", storage=1, recreation=1)
    with pytest.raises(ModelHubError, match="'b'"):
        solve(g)  # b unreachable from 0
    g.add_edge("a", "b", storage=1, recreation=1)
    with pytest.raises(ModelHubError):
        g.add_edge("a", "0", storage=1, recreation=1)
    with pytest.raises(ModelHubError, match="'q'"):
        g.add_edge("a", "q", storage=1, recreation=1)
    with pytest.raises(ModelHubError, match="'q'"):
        g.add_edge("q", "a", storage=1, recreation=1)
    with pytest.raises(ModelHubError):
        g.add_edge("0", "a", storage=-1, recreation=1)
    with pytest.raises(ModelHubError):
        g.add_edge("0", "a", storage=1, recreation=-0.5)
    with pytest.raises(ModelHubError):
        g.add_edge("0", "a", storage=float("nan"), recreation=1)
    with pytest.raises(ModelHubError):
        g.add_matrix("0")
    with pytest.raises(ModelHubError):
        solve(g, algorithm="dijkstra")
    with pytest.raises(ModelHubError):
        solve(g, scheme="serial")
    with pytest.raises(ModelHubError, match="'zz'"):
        solve(g, {"zz": 1.0})
    with pytest.raises(ModelHubError):
        solve(g, {"s": -1.0})
    with pytest.raises(ValueError):
        solve(g, algorithm="last", epsilon=-1)
    assert solve(StorageGraph()).storage_cost == 0.0


# ------------------------------------------------------------------ exhaustive optimum
def random_graph(rng: random.Random, n: int, n_groups: int, p_delta: float) -> StorageGraph:
    g = StorageGraph()
    names = [f"m{i}" for i in range(n)]
    groups = [f"s{j}" for j in range(n_groups)]
    for i, m in enumerate(names):
        mine = {groups[i % n_groups]} if i < n_groups else set()  # no empty group
        mine |= {x for x in groups if rng.random() < 0.35}
        g.add_matrix(m, group=sorted(mine))
    for m in names:
        g.add_edge("0", m, storage=rng.uniform(5, 20), recreation=rng.uniform(1, 5))
        if rng.random() < 0.2:  # a second tier: cheaper to keep, slower to read
            g.add_edge("0", m, storage=rng.uniform(2, 6), recreation=rng.uniform(4, 12))
    for a, b in itertools.permutations(names, 2):
        if rng.random() < p_delta:
            g.add_edge(a, b, storage=rng.uniform(0.5, 6), recreation=rng.uniform(0.5, 4))
    return g


def all_trees(g: StorageGraph):
    """Every arborescence: (storage, recreation per matrix), by brute force."""
    names = list(g.matrices)
    idx = {m: i for i, m in enumerate(names)}
    incoming = [[] for _ in names]
    for e in g.edges:
        incoming[idx[e.dst]].append((-1 if e.src == "0" else idx[e.src], e.storage, e.recreation))
    out = []
    n = len(names)
    for combo in itertools.product(*incoming):
        d = [-1.0] * n
        ok = True
        for i in range(n):
            stack, x = [], i
            while x >= 0 and d[x] < 0:
                if x in stack:
                    ok = False
                    break
                stack.append(x)
                x = combo[x][0]
            if not ok:
                break
            base = 0.0 if x < 0 else d[x]
            for y in reversed(stack):
                base += combo[y][2]
                d[y] = base
        if ok:
            out.append((math.fsum(c[1] for c in combo), dict(zip(names, d))))
    return out


def test_exhaustive_optimum():
    rng = random.Random(20170419)
    excess = {(a, s): [] for a in ("pas-mt", "pas-pt") for s in SCHEMES}
    instances = 0
    while instances < 400:
        n = rng.randint(3, 8)
        g = random_graph(rng, n, rng.randint(2, 3), rng.uniform(0.2, 0.5))
        if math.prod(len([e for e in g.edges if e.dst == m]) for m in g.matrices) > 12000:
            continue
        instances += 1
        trees = all_trees(g)
        unconstrained = min(s for s, _ in trees)
        groups = g.groups
        for scheme in SCHEMES:
            spt = solve(g, scheme=scheme, algorithm="spt")
            budgets = {
                grp: spt.recreation_cost(grp) * (1.0 if rng.random() < 0.15 else rng.uniform(1, 2))
                for grp in groups
            }
            best = math.inf
            best_cost = {grp: math.inf for grp in groups}
            for storage, rec in trees:
                costs = {grp: _agg((rec[m] for m in ms), scheme) for grp, ms in groups.items()}
                for grp, c in costs.items():
                    best_cost[grp] = min(best_cost[grp], c)
                if storage < best and all(costs[x] <= budgets[x] + 1e-9 for x in budgets):
                    best = storage
            assert best < math.inf  # SPT itself is feasible
            plans = {a: solve(g, budgets, scheme, a) for a in ALGOS}
            for a, plan in plans.items():
                check_plan(g, plan, budgets, scheme)
                assert plan.storage_cost >= unconstrained - 1e-9
                for grp in groups:
                    assert spt.recreation_cost(grp) <= plan.recreation_cost(grp) + 1e-9, a
            assert plans["mst"].storage_cost == pytest.approx(unconstrained, abs=1e-9)
            for grp in groups:
                assert spt.recreation_cost(grp) == pytest.approx(best_cost[grp], abs=1e-9)
            assert plans["spt"].feasible
            for a in ("pas-mt", "pas-pt"):
                assert plans[a].feasible, (a, scheme, budgets)
                assert plans[a].storage_cost >= best - 1e-9
                excess[(a, scheme)].append(plans[a].storage_cost / best - 1.0)
    for (a, scheme), xs in sorted(excess.items()):
        avg = sum(xs) / len(xs)
        optimal = sum(x < 1e-9 for x in xs) / len(xs)
        print(
            f"{a:7s} {scheme:11s}: {len(xs)} instances, average storage excess over optimum "
            f"{100 * avg:.2f}% (max {100 * max(xs):.1f}%, optimal in {100 * optimal:.0f}%)"
        )
        assert avg < 0.10


# ------------------------------------------------------------------ properties
@st.composite
def graphs(draw):
    n = draw(st.integers(0, 8))
    names = [f"m{i}" for i in range(n)]
    groups = ["g0", "g1", "g2"]
    g = StorageGraph()
    for m in names:
        g.add_matrix(m, group=draw(st.lists(st.sampled_from(groups), max_size=2)))
    cost = st.floats(0, 20, allow_nan=False)
    for m in names:
        for _ in range(draw(st.integers(1, 2))):
            g.add_edge("0", m, storage=draw(cost), recreation=draw(cost))
    if n >= 2:
        pairs = st.tuples(st.sampled_from(names), st.sampled_from(names)).filter(
            lambda p: p[0] != p[1]
        )
        for a, b in draw(st.lists(pairs, max_size=3 * n)):
            g.add_edge(a, b, storage=draw(cost), recreation=draw(cost))
    budgets = draw(
        st.dictionaries(st.sampled_from(list(g.groups) or ["-"]), st.floats(0, 60), max_size=3)
    )
    budgets = {k: v for k, v in budgets.items() if k in g.groups}
    return g, budgets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from(SCHEMES))
def test_property_invariants(gb, scheme):
    g, budgets = gb
    spt = solve(g, budgets, scheme, "spt")
    for algo in ALGOS:
        plan = solve(g, budgets, scheme, algo, epsilon=0.5)
        check_plan(g, plan, budgets, scheme)
        if plan.feasible:
            for grp, b in budgets.items():
                assert plan.recreation_cost(grp) <= b + TOL
        if algo.startswith("pas"):
            assert plan.violation <= spt.violation + 1e-9
            if spt.feasible:
                assert plan.feasible


def test_medium_graph_scales():
    """A few hundred matrices: every algorithm returns a valid plan quickly."""
    rng = random.Random(7)
    n = 200
    g = StorageGraph()
    names = [f"m{i}" for i in range(n)]
    for i, m in enumerate(names):
        g.add_matrix(m, group=f"s{i // 10}")
        g.add_edge("0", m, storage=rng.uniform(50, 100), recreation=rng.uniform(1, 3))
    while len(g.edges) < 2000:
        a = rng.randrange(n)
        b = min(n - 1, max(0, a + rng.randint(-20, 20)))
        if a != b:
            g.add_edge(names[a], names[b], storage=rng.uniform(1, 20), recreation=rng.uniform(1, 5))
    for scheme in SCHEMES:
        spt = solve(g, scheme=scheme, algorithm="spt")
        budgets = {s: 1.5 * spt.recreation_cost(s) for s in g.groups}
        mst = solve(g, budgets, scheme, "mst")
        for algo in ("pas-mt", "pas-pt"):
            plan = solve(g, budgets, scheme, algo)
            check_plan(g, plan, budgets, scheme)
            assert plan.feasible
            assert mst.storage_cost <= plan.storage_cost < spt.storage_cost
