"""``slice`` and ``construct``: new networks cut or edited out of stored versions, each
committed as a version of a new model whose parent is the version it came from.

The edits run on the version's recorded architecture (``netedit``), the network is
rebuilt from allow-listed layers only (``architecture.build_module``), and every
tensor it keeps is the source's, bit for bit, so the new version stores only what is
new (the codec finds the unchanged tensors in its parent). New layers are initialised
as torch initialises them, from a seed derived from the statement and the source, so
running a statement twice derives the same weights; a version the same statement
(``derivation_key``: however it was nested or spelled) already derived from the same
source is returned instead of committed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from modelhub_torch.dql.compiler import compile_select
from modelhub_torch.dql.engine import prepare_connection
from modelhub_torch.dql.parser import (
    BoolOp,
    Compare,
    Derive,
    Field,
    HasLayer,
    Literal,
    NodeSet,
    Select,
    Template,
    caret_error,
)
from modelhub_torch.errors import DQLError, ModelHubError
from modelhub_torch.netedit import NetEditError
from modelhub_torch.node_patterns import capture_regex, node_pattern
from modelhub_torch.records import Version
from modelhub_torch.store.repo import RepoStore


@dataclass
class Derived:
    """One result: the version committed (or found), where it came from, and how."""

    version_id: str
    source: str  # the source's ref
    status: str  # "created" | "exists"
    edits: list[str]


def model_name(stmt: Derive, source: Version) -> str:
    """The documented naming rule: ``as "name"``, else ``<source model>-<slice|construct>``."""
    return stmt.name or f"{source.model}-{stmt.kind}"


def derive(store: RepoStore, stmt: Derive, text: str, sources: list[Version], var: str) -> list[Derived]:
    """Run a slice / construct over ``sources`` (already filtered by its where clause)."""
    _check_mutations(stmt, text, var)
    prepare_connection(store.catalog.connection())  # for the per-node conditions (_holds)
    out = []
    for source in sources:
        result = _derive_one(store, stmt, text, source, var)
        if result is not None:
            out.append(result)
    return out


def _check_mutations(stmt: Derive, text: str, var: str) -> None:
    for mut in stmt.mutations:
        nodes = mut.value if stmt.kind == "slice" else mut.target
        if stmt.kind == "slice":
            if mut.action is not None or not (hasattr(mut.target, "path") and mut.target.path in (("input",), ("output",))):
                raise caret_error(text, mut.pos, "slice takes 'm2.input = m1[\"node\"] and m2.output = m1[\"node\"]'")
            if mut.target.var != stmt.new:
                raise caret_error(text, mut.pos, f"the slice's new model is {stmt.new!r}: write {stmt.new}.{mut.target.path[0]}")
        elif mut.action is None:
            raise caret_error(text, mut.pos, "construct edits nodes: m1[\"node\"].insert = RELU(\"name\"), "
                              ".replace = POOL(\"AVG\") or .delete")
        if not isinstance(nodes, NodeSet) or nodes.var != var:
            got = getattr(nodes, "var", "?")
            raise caret_error(text, getattr(nodes, "pos", mut.pos),
                              f"unknown name {got!r}: the source versions are {var!r} here")
        try:
            re.compile(node_pattern(nodes.pattern))
        except re.error as exc:
            raise caret_error(text, nodes.pos, f"bad node pattern {nodes.pattern!r}: {exc}") from None
    if stmt.kind == "slice":
        ends = [m.target.path[0] for m in stmt.mutations]
        if sorted(ends) != ["input", "output"]:
            raise caret_error(text, stmt.pos, f"slice needs exactly one {stmt.new}.input and one {stmt.new}.output")


def _walk(net: Any, names: list[str], steps: tuple[str, ...]) -> list[str]:
    """Display names reached from ``names`` by ``.next`` / ``.prev`` hops."""
    fx_of = net.names()
    shown = {v: k for k, v in fx_of.items()}
    for step in steps:
        reached: dict[str, None] = {}
        for name in names:
            fx = fx_of[name]
            if step == "next":
                for user in net.users(fx):
                    reached[shown[user["name"]]] = None
            else:
                for feed in net.inputs(net.node(fx)):
                    reached[shown[feed]] = None
        names = list(reached)
    return names


def _matching(net: Any, nodes: NodeSet) -> list[tuple[str, re.Match[str]]]:
    regex, _ = capture_regex(nodes.pattern)
    out = []
    for name in net.names():
        m = regex.match(name)
        if m:
            out.append((name, m))
    return out


def _node_conditions(where: Any, target: NodeSet) -> list[HasLayer]:
    """The where clause's top-level ``<same selector>.next has TEMPLATE`` conditions:
    they pick which of the matched nodes an edit applies to (the paper's
    ``m1["conv*($1)"].next has POOL("AVG")`` inserts only after those convs)."""
    items = where.items if isinstance(where, BoolOp) and where.op == "and" else (where,)
    out = []
    for item in items:
        if isinstance(item, BoolOp) and item.op == "and":
            out.extend(_node_conditions(item, target))
        elif isinstance(item, HasLayer) and item.nodes.var == target.var and item.nodes.pattern == target.pattern:
            out.append(item)
    return out


def _holds(store: RepoStore, vid: str, node: str, cond: HasLayer, text: str) -> bool:
    """Whether ``cond`` holds for the single node ``node`` of version ``vid`` (the
    select compiler runs it, so templates mean exactly what they mean in a select)."""
    exact = "".join(f"[{c}]" if c in "*?[(" else c for c in node)
    one = HasLayer(NodeSet(cond.nodes.var, exact, cond.nodes.steps, pos=cond.pos), cond.template, pos=cond.pos)
    where = BoolOp("and", (Compare("=", Field(cond.nodes.var, ("id",)), Literal(vid)), one))
    compiled = compile_select(Select(cond.nodes.var, where), text, lambda ref: ref)
    return bool(store.catalog.connection().execute(compiled.sql, compiled.params).fetchall())


def _endpoint(net: Any, nodes: NodeSet, source: Version, text: str) -> str:
    found = _walk(net, [n for n, _ in _matching(net, nodes)], nodes.steps)
    if len(found) != 1:
        listing = ", ".join(found[:8]) or "none"
        raise caret_error(text, nodes.pos, f"{nodes.var}[{json.dumps(nodes.pattern)}]{''.join('.' + s for s in nodes.steps)} "
                          f"must name one node of {source.ref}; it names {len(found)} ({listing})")
    return found[0]


def _substitute(name: str, match: re.Match[str] | None, captures: dict[str, int]) -> str:
    def one(m: re.Match[str]) -> str:
        k = m.group(1)
        if match is None or k not in captures or captures[k] == 0:
            raise DQLError(f"${k} in {name!r} is not captured: write ($k) right after a wildcard in the node "
                           f"pattern, e.g. m1[\"conv*($1)\"]")
        return match.group(captures[k]) or ""
    return re.sub(r"\$(\d+)", one, name)


def _template_parts(t: Template) -> tuple[tuple[Any, ...], str | None, dict[str, Any]]:
    """(kind arguments, layer name, attributes) of a template used to create a layer:
    ``RELU("relu$1")`` names the layer; ``POOL("AVG", "pool$1")`` takes its kind first."""
    args = list(t.args)
    kind_args: tuple[Any, ...] = ()
    if t.name.upper() == "POOL" and args and str(args[0]).upper() in ("MAX", "AVG", "AVERAGE", "MEAN"):
        kind_args = (args.pop(0),)
    name = str(args.pop(0)) if args else None
    if args:
        raise DQLError(f"{t.name}(...) takes a kind, a name and key=value attributes; "
                       f"{args[0]!r} is one argument too many")
    return kind_args, name, dict(t.kwargs)


def _apply(net: Any, stmt: Derive, source: Version, store: RepoStore, text: str) -> list[str]:
    edits: list[str] = []
    if stmt.kind == "slice":
        ends = {m.target.path[0]: m.value for m in stmt.mutations}
        start = _endpoint(net, ends["input"], source, text)
        end = _endpoint(net, ends["output"], source, text)
        try:
            net.slice(start, end)
        except NetEditError as exc:
            raise caret_error(text, ends["output"].pos, f"slice on {source.ref}: {exc}") from None
        return [f"slice {start} .. {end}"]
    for mut in stmt.mutations:
        target: NodeSet = mut.target
        conds = _node_conditions(stmt.where, target) if stmt.where is not None else []
        _, captures = capture_regex(target.pattern)
        # the nodes are picked before any edit: deleting ``drop`` renames ``drop#2``
        picked: list[tuple[str, re.Match[str]]] = []
        fx_of = net.names()
        for name, match in _matching(net, target):
            if all(_holds(store, source.id, name, c, text) for c in conds):
                picked.extend((fx_of[at], match) for at in _walk(net, [name], target.steps))
        for fx_name, match in _unique_pairs(picked):
            at = {v: k for k, v in net.names().items()}[fx_name]
            try:
                edits.append(_edit(net, mut, at, match, captures))
            except NetEditError as exc:  # at the layer template, or the node for a delete
                where = mut.value.pos if mut.value is not None else mut.pos
                raise caret_error(text, where, f"construct on {source.ref}: {exc}") from None
    return edits


def _edit(net: Any, mut: Any, at: str, match: re.Match[str], captures: dict[str, int]) -> str:
    """One insert / replace / delete at node ``at``; what was done, in words."""
    from modelhub_torch.netedit import layer_for

    if mut.action == "delete":
        net.delete(at)
        return f"delete {at}"
    t: Template = mut.value
    kind_args, new_name, attrs = _template_parts(t)
    new_name = _substitute(new_name, match, captures) if new_name else None
    if mut.action == "insert":
        layer = layer_for(t.name, kind_args, attrs, net, at)
        default = f"{t.name.lower()}_{at}".replace(".", "_").replace("#", "_")
        path = net.insert_after(at, layer, new_name or default)
        return f"insert {layer[0]} {path} after {at}"
    old = net.node(net.fx_name(at))
    replacing = net.modules.get(old.get("target")) if old["op"] == "call_module" else None
    layer = layer_for(t.name, kind_args, attrs, net, at, replacing=replacing or {"type": "", "args": {}})
    path = net.replace(at, layer, new_name)
    return f"replace {at} with {layer[0]} {path}"


def _unique_pairs(pairs: list[tuple[str, re.Match[str]]]) -> list[tuple[str, re.Match[str]]]:
    seen: set[str] = set()
    out = []
    for name, match in pairs:
        if name not in seen:
            seen.add(name)
            out.append((name, match))
    return out


def derivation_key(stmt: Derive) -> str:
    """What decides a derived network given its source: the kind of statement, its
    where clause (which nodes an edit applies to) and its edits, not where the sources
    came from or how the statement was spelled or nested."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return [type(x).__name__, {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)
                                       if f.name not in ("pos", "source")}]
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        return x
    return hashlib.sha256(json.dumps(plain(stmt), sort_keys=True, default=str).encode()).hexdigest()[:32]


def _existing(store: RepoStore, model: str, source: Version, key: str) -> str | None:
    conn = store.catalog.connection()
    for row in conn.execute("SELECT id, info FROM versions WHERE model = ? AND parent = ? ORDER BY number",
                            (model, source.id)):
        try:
            if json.loads(row["info"]).get("dql_key") == key:
                return str(row["id"])
        except (ValueError, AttributeError):
            continue
    return None


def _derive_one(store: RepoStore, stmt: Derive, text: str, source: Version, var: str) -> Derived | None:
    import torch

    from modelhub_torch.architecture import build_module, capture_architecture
    from modelhub_torch.background import after_commit
    from modelhub_torch.commit import CommitRequest, commit_version
    from modelhub_torch.graph import capture_graph
    from modelhub_torch.netedit import Network
    from modelhub_torch.reader import load_weights
    from modelhub_torch.records import jsonable
    from modelhub_torch.skeleton import flatten
    from modelhub_torch.store.refs import check_name

    arch = store.manifest(source.id).extra.get("architecture")
    try:
        net = Network(arch)
        edits = _apply(net, stmt, source, store, text)
    except ModelHubError as exc:
        if isinstance(exc, DQLError):
            raise
        raise ModelHubError(f"{stmt.kind} on {source.ref}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration) as exc:
        # a record no capture writes (hand-edited, damaged): refused, nothing built
        raise ModelHubError(f"{stmt.kind} on {source.ref}: its recorded architecture is damaged "
                            f"({type(exc).__name__}: {exc}); commit the nn.Module again") from None
    if not edits:
        return None  # the pattern matched no node of this version
    model = model_name(stmt, source)
    check_name("model", model)
    key = derivation_key(stmt)
    found = _existing(store, model, source, key)
    if found is not None:
        return Derived(found, source.ref, "exists", edits)
    seed = int.from_bytes(hashlib.sha256(f"{key}\0{source.id}".encode()).digest()[:8], "little") >> 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = build_module(net.record())
        except ModelHubError as exc:
            raise ModelHubError(f"{stmt.kind} on {source.ref}: {exc}") from None
    weights = load_weights(store, source.id)
    own = module.state_dict()
    kept = {k: v for k, v in weights.items() if k in own}
    module.load_state_dict(kept, strict=False)
    new_keys = sorted(set(own) - set(kept))
    module.eval()
    version = commit_version(store, CommitRequest(
        flat=flatten(module.state_dict()), model=model, parent=source.id,
        metrics={}, hparams={},
        message=f"{stmt.kind} of {source.ref}: " + "; ".join(edits),
        info=jsonable({"dql": text, "dql_key": key, "source": source.ref, "derived_by": stmt.kind, "edits": edits,
                       "initialised": new_keys}, "info"),
        graph=capture_graph(module), architecture=capture_architecture(module),
    ))
    after_commit(store, [model])  # as Repository.commit does
    return Derived(version.id, source.ref, "created", edits)


__all__ = ["Derived", "derivation_key", "derive", "model_name"]
