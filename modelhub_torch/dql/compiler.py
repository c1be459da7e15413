"""A parsed ``select`` → one SQL query over the catalog (versions, graph nodes/edges).

Everything runs inside SQLite: metadata fields are columns or ``json_extract`` of the
metrics/hparams/info JSON, network predicates are subqueries over the graph tables,
which hold each distinct architecture once (versions point at it by digest), so a
structural filter touches a few hundred node rows however many versions share them.
Weights are never read.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelhub_torch.dql.parser import (
    BoolOp,
    Compare,
    Count,
    DQLError,
    Field,
    HasLayer,
    HasValue,
    InList,
    IsNull,
    Like,
    Literal,
    NodeSet,
    Not,
    Select,
    Template,
    caret_error,
)
from modelhub_torch.node_patterns import node_pattern

# field -> (SQL over the versions row "v", type); JSON maps are handled apart
COLUMNS: dict[str, tuple[str, str]] = {
    "name": ("v.model", "text"),
    "version": ("v.number", "number"),
    "id": ("v.id", "text"),
    "ref": ("(v.model || '@v' || v.number)", "text"),
    "creation_time": ("v.created_at", "text"),
    "created": ("v.created_at", "text"),
    "parent": ("(SELECT p.model || '@v' || p.number FROM versions p WHERE p.id = v.parent)", "text"),
    "message": ("v.message", "text"),
    "params": ("v.params", "number"),
    "size": ("v.stored_bytes", "number"),
    "raw_size": ("v.raw_bytes", "number"),
    # 1/0, NULL for a version that is no trainer checkpoint (modelhub_torch.resumable)
    "resumable": ("v.resumable", "boolean"),
    "pickle": ("v.pickle", "boolean"),
}
JSON_MAPS = {"metrics": "v.metrics", "hparams": "v.hparams", "info": "v.info"}
SETS = ("tags", "ancestors", "descendants")
KNOWN = sorted([*COLUMNS, *(f"{k}.<key>" for k in JSON_MAPS), *SETS])

# layer templates -> graph node category (docs/DQL.md lists them)
TEMPLATES: dict[str, str] = {
    "CONV": "conv", "POOL": "pool", "RELU": "relu", "LEAKYRELU": "leakyrelu", "ELU": "elu",
    "GELU": "gelu", "SILU": "silu", "SIGMOID": "sigmoid", "TANH": "tanh", "SOFTMAX": "softmax",
    "LINEAR": "linear", "FC": "linear", "IP": "linear", "BN": "bn", "BATCHNORM": "bn",
    "LN": "ln", "LAYERNORM": "ln", "GN": "gn", "LRN": "lrn", "NORM": "lrn", "DROPOUT": "dropout",
    "FLATTEN": "flatten", "RESHAPE": "reshape", "EMBEDDING": "embedding", "ADD": "add",
    "MUL": "mul", "CAT": "cat", "CONCAT": "cat", "ATTENTION": "attention", "INPUT": "input",
    "OUTPUT": "output",
}
POOL_KINDS = {"MAX": "max", "AVG": "avg", "AVERAGE": "avg", "MEAN": "avg"}


@dataclass
class Compiled:
    sql: str
    # positional parameters, in the order of the ``?`` in ``sql``. Not named or numbered
    # ones: SQLite looks each up among the earlier ones, quadratic in their number
    # (a 40000-value 'in' list took seconds instead of milliseconds)
    params: list[Any]
    columns: list[str]  # result columns beyond the version's own fields
    needs_tags: bool = False


@dataclass
class _Ctx:
    text: str
    var: str
    resolve: Callable[[str], str]  # ref -> version id (raises ModelHubError)
    params: list[Any] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    ctes: list[str] = field(default_factory=list)
    needs_tags: bool = False

    def error(self, node: Any, message: str) -> DQLError:
        return caret_error(self.text, getattr(node, "pos", None), message)

    def bind(self, value: Any) -> str:
        """A placeholder for ``value``: ``?N`` while compiling (SQL is assembled out of
        order), made positional by ``_positional`` at the end."""
        self.params.append(value)
        return f"?{len(self.params)}"

    def cte(self, sql: str) -> str:
        """Name of a new materialized CTE holding ``sql`` (computed once per query)."""
        name = f"q{len(self.ctes)}"
        self.ctes.append(f"{name} AS MATERIALIZED ({sql})")
        return name


def compile_select(stmt: Select, text: str, resolve: Callable[[str], str]) -> Compiled:
    ctx = _Ctx(text, stmt.var, resolve)
    where = _expr(stmt.where, ctx) if stmt.where is not None else "1"
    order = []
    for item in stmt.order:
        sql, _ = _operand(item.operand, ctx, want_column=True)
        order.append(f"{sql} {'DESC' if item.descending else 'ASC'}")
    order.append("v.model ASC, v.number ASC")  # a stable order after the user's keys
    extra = "".join(f", {sql} AS \"{name}\"" for name, sql in ctx.columns.items())
    sql = f"SELECT v.*{extra} FROM versions v WHERE {where} ORDER BY {', '.join(order)}"
    if ctx.ctes:
        sql = "WITH " + ", ".join(ctx.ctes) + " " + sql
    if stmt.limit is not None or stmt.offset is not None:  # both checked by the parser
        sql += f" LIMIT {-1 if stmt.limit is None else int(stmt.limit)}"
        if stmt.offset is not None:
            sql += f" OFFSET {int(stmt.offset)}"
    sql, params = _positional(sql, ctx.params)
    return Compiled(sql, params, list(ctx.columns), ctx.needs_tags)


def _positional(sql: str, params: list[Any]) -> tuple[str, list[Any]]:
    """``?N`` placeholders → plain ``?`` with the values in text order. Only ``bind``
    writes a '?' into the SQL (values are never inlined; inlined names are identifiers)."""
    ordered: list[Any] = []

    def take(m: re.Match[str]) -> str:
        ordered.append(params[int(m.group(1)) - 1])
        return "?"

    return re.sub(r"\?(\d+)", take, sql), ordered


# -------------------------------------------------------------------- expressions
def _balanced(op: str, parts: list[str]) -> str:
    """``(a OP b OP c ...)`` grouped as a balanced tree: SQLite limits expression depth
    (1000), and a flat chain of n terms is n deep, a balanced one log2(n)."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return f"({_balanced(op, parts[:mid])} {op} {_balanced(op, parts[mid:])})"


def _same_op_items(node: BoolOp) -> list[Any]:
    """The operands of ``a and (b and c)`` as one list: one level of SQL, not two
    (SQLite's parser has a bounded stack; see ``_balanced``)."""
    out, todo = [], list(reversed(node.items))
    while todo:
        item = todo.pop()
        if isinstance(item, BoolOp) and item.op == node.op:
            todo.extend(reversed(item.items))
        else:
            out.append(item)
    return out


def _expr(node: Any, ctx: _Ctx) -> str:
    if isinstance(node, BoolOp):
        return _balanced(node.op.upper(), [_expr(i, ctx) for i in _same_op_items(node)])
    if isinstance(node, Not):
        inner, negated = node.item, True
        while isinstance(inner, Not):  # not not x is x, in SQL's three-valued logic too
            inner, negated = inner.item, not negated
        sql = _expr(inner, ctx)
        return f"(NOT {sql})" if negated else sql
    if isinstance(node, Compare):
        return _compare(node, ctx)
    if isinstance(node, Like):
        return _like(node, ctx)
    if isinstance(node, InList):
        return _in_list(node, ctx)
    if isinstance(node, IsNull):
        sql, _ = _operand(node.operand, ctx)
        return f"({sql} IS {'NOT ' if node.negate else ''}NULL)"
    if isinstance(node, HasLayer):
        return _has_layer(node, ctx)
    if isinstance(node, HasValue):
        return _has_value(node, ctx)
    if isinstance(node, (Field, Literal, Count)):
        raise ctx.error(node, "a condition is needed here (e.g. m.metrics.acc > 0.9), not a bare value")
    raise ctx.error(node, f"unsupported expression {type(node).__name__}")


def _operand(node: Any, ctx: _Ctx, want_column: bool = False) -> tuple[str, str]:
    """SQL and type ("number" | "text" | "json" | "any") of an operand."""
    if isinstance(node, Literal):
        if isinstance(node.value, bool):
            return ctx.bind(1 if node.value else 0), "bool"  # json_extract gives 1/0 for true/false
        return ctx.bind(node.value), "number" if isinstance(node.value, (int, float)) else "text"
    if isinstance(node, Count):
        return _count(node, ctx), "number"
    if isinstance(node, Field):
        return _field(node, ctx, want_column)
    raise ctx.error(node, "expected a field, a literal or count(...)")


def _field(f: Field, ctx: _Ctx, want_column: bool = False) -> tuple[str, str]:
    if f.var != ctx.var:
        raise ctx.error(f, f"unknown name {f.var!r}: this query's model variable is {ctx.var!r}")
    head, rest = f.path[0], f.path[1:]
    if head in JSON_MAPS:
        if len(rest) != 1:
            raise ctx.error(f, f"{f.var}.{head} needs one key, e.g. {f.var}.{head}.val_acc")
        key = rest[0].replace('"', '""')
        sql = f"json_extract({JSON_MAPS[head]}, '$.\"{key}\"')"
        ctx.columns.setdefault(f.dotted, sql)
        return sql, "json"
    if head in COLUMNS and not rest:
        return COLUMNS[head][0], COLUMNS[head][1]
    if head in SETS and not rest:
        raise ctx.error(f, f"{f.var}.{head} is a set: use '{f.var}.{head} has \"...\"'")
    guess = difflib.get_close_matches(f.dotted, KNOWN, n=1, cutoff=0.5) or difflib.get_close_matches(head, KNOWN, n=1, cutoff=0.5)
    hint = f"; did you mean {f.var}.{guess[0]}?" if guess else f"; known fields: {', '.join(KNOWN)}"
    raise ctx.error(f, f"unknown field {f.var}.{f.dotted}{hint}")


def _typed(sql: str, typ: str, want: str) -> str:
    """Restrict a JSON value to the literal's type: numbers compare as numbers and
    strings as strings (a metric that is a string never equals 0.9)."""
    if typ != "json":
        return ""
    kinds = {"number": "('integer','real')", "bool": "('true','false')"}.get(want, "('text')")
    arg = sql.replace("json_extract(", "json_type(", 1)
    return f"{arg} IN {kinds} AND "


_WITH = {"number": "a number", "text": "a text", "boolean": "true or false"}
_LITERAL_NAME = {"number": "a number", "text": "a text", "bool": "true or false", "boolean": "true or false"}


def _check_types(side: Any, t: str, other: Any, ot: str, ctx: _Ctx) -> None:
    """A fixed field compared with a literal (or field) of another type is an error at
    the literal: it could never match, which is a typo more often than not."""
    if t not in _WITH or ot not in _LITERAL_NAME or not isinstance(side, Field):
        return
    if {t, ot} <= {"bool", "boolean"} or t == ot:
        return
    raise ctx.error(other, f"{_describe(side)} is {_WITH[t]}; compare it with {_WITH[t]}, not {_LITERAL_NAME[ot]}")


def _compare(node: Compare, ctx: _Ctx) -> str:
    left, lt = _operand(node.left, ctx)
    right, rt = _operand(node.right, ctx)
    if node.bare and lt not in ("boolean", "json"):
        what = {"number": "m.x > 0", "text": 'm.x = "..."'}.get(lt, "a comparison").replace("m.x", _describe(node.left))
        raise ctx.error(node, f"{_describe(node.left)} alone is a condition only for a true/false field, and it "
                              f"is {_WITH.get(lt, 'not one')}; write {what}")
    for (side, t), (other, ot) in (((node.left, lt), (node.right, rt)), ((node.right, rt), (node.left, lt))):
        _check_types(side, t, other, ot, ctx)
    guard = ""
    if lt == "json" and rt in ("number", "text", "bool"):
        guard = _typed(left, lt, rt)
    elif rt == "json" and lt in ("number", "text", "bool"):
        guard = _typed(right, rt, lt)
    op = "=" if node.op == "=" else node.op
    return f"({guard}{left} {op} {right})"


def _literal_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else "text"


def _describe(node: Any) -> str:
    """An operand as the user wrote it, for messages (a field, a literal or a count)."""
    if isinstance(node, Field):
        return f"{node.var}.{node.dotted}"
    if isinstance(node, Count):
        ns = node.nodes
        return f"count({ns.var}[{json.dumps(ns.pattern, ensure_ascii=False)}]{''.join('.' + s for s in ns.steps)})"
    if isinstance(node, Literal):
        if isinstance(node.value, bool):
            return str(node.value).lower()
        return json.dumps(node.value, ensure_ascii=False) if isinstance(node.value, str) else repr(node.value)
    return type(node).__name__


def _like(node: Like, ctx: _Ctx) -> str:
    if isinstance(node.operand, Field) and node.operand.path == ("tags",):
        ctx.needs_tags = True
        pat = ctx.bind(node.pattern)
        cond = f"lower(t.alias) LIKE lower({pat})" if node.ignore_case else f"t.alias LIKE {pat}"
        sql = f"EXISTS (SELECT 1 FROM temp.q_tags t WHERE t.version = v.id AND {cond})"
        return f"(NOT {sql})" if node.negate else sql
    sql, typ = _operand(node.operand, ctx)
    if typ in ("number", "boolean"):
        raise ctx.error(node, f"like compares text, and {_describe(node.operand)} is {_WITH[typ]}")
    guard = _typed(sql, typ, "text")
    pat = ctx.bind(node.pattern)
    cond = f"lower({sql}) LIKE lower({pat})" if node.ignore_case else f"{sql} LIKE {pat}"
    return f"({guard}{'NOT ' if node.negate else ''}{cond})"


def _in_list(node: InList, ctx: _Ctx) -> str:
    sql, typ = _operand(node.operand, ctx)
    kinds = {_literal_type(v.value) for v in node.values}
    if typ in ("number", "text") and kinds - {typ}:
        raise ctx.error(node, f"{_describe(node.operand)} is a {typ}; list only {typ}s")
    if typ == "boolean" and kinds - {"bool"}:
        raise ctx.error(node, f"{_describe(node.operand)} is true or false; list only true and false")
    guard = _typed(sql, typ, kinds.pop()) if len(kinds) == 1 else ""
    marks = ", ".join(ctx.bind(int(v.value) if isinstance(v.value, bool) else v.value) for v in node.values)
    return f"({guard}{sql} {'NOT ' if node.negate else ''}IN ({marks}))"


def _has_value(node: HasValue, ctx: _Ctx) -> str:
    f = node.field
    if f.var != ctx.var:
        raise ctx.error(f, f"unknown name {f.var!r}: this query's model variable is {ctx.var!r}")
    if f.path not in (("tags",), ("ancestors",), ("descendants",)):
        raise ctx.error(f, f"'has' applies to {f.var}.tags, {f.var}.ancestors, {f.var}.descendants or a node selector {f.var}[\"...\"]")
    value = node.value.value
    if not isinstance(value, str):
        raise ctx.error(node.value, "expected a string (a tag, or a ref like \"base@v1\")")
    if f.path == ("tags",):
        ctx.needs_tags = True
        return f"EXISTS (SELECT 1 FROM temp.q_tags t WHERE t.version = v.id AND t.alias = {ctx.bind(value)})"
    try:
        vid = ctx.resolve(value)
    except Exception as exc:  # a ModelHubError naming the closest refs
        raise ctx.error(node.value, str(exc)) from None
    mark = ctx.bind(vid)
    if f.path == ("ancestors",):  # versions that descend from vid
        walk = f"SELECT id FROM versions WHERE parent = {mark} UNION SELECT c.id FROM versions c JOIN lineage l ON c.parent = l.id"
    else:  # versions that vid descends from
        walk = f"SELECT parent FROM versions WHERE id = {mark} UNION SELECT p.parent FROM versions p JOIN lineage l ON p.id = l.id"
    return f"v.id IN (WITH RECURSIVE lineage(id) AS ({walk}) SELECT id FROM lineage WHERE id IS NOT NULL)"


# ------------------------------------------------------------------- networks
def _nodes_sql(ns: NodeSet, ctx: _Ctx) -> str:
    """SELECT graph, name of the nodes a selector reaches (possibly repeated)."""
    if ns.var != ctx.var:
        raise ctx.error(ns, f"unknown name {ns.var!r}: this query's model variable is {ctx.var!r}")
    regex = _checked_pattern(ns.pattern, ns, ctx)
    sql = f"SELECT graph, name FROM graph_nodes WHERE name REGEXP {ctx.bind(regex)}"
    for step in ns.steps:
        # each hop is a CTE of distinct nodes: long walks neither nest subqueries past
        # SQLite's parser depth nor multiply the paths through branching graphs
        prev = ctx.cte(sql)
        there, here = ("dst", "src") if step == "next" else ("src", "dst")
        sql = (f"SELECT DISTINCT e.graph, e.{there} AS name FROM graph_edges e"
               f" JOIN {prev} s ON e.graph = s.graph AND e.{here} = s.name")
    return sql


def _checked_pattern(pattern: str, node: Any, ctx: _Ctx) -> str:
    """A node-name pattern as a regular expression Python compiles (REGEXP runs in
    Python, where a bad one would surface as an SQLite error)."""
    try:
        regex = node_pattern(pattern)
        re.compile(regex)
    except re.error as exc:
        raise ctx.error(node, f"bad node pattern {pattern!r}: {exc}") from None
    return regex


def _template(t: Template, ctx: _Ctx) -> str:
    name = t.name.upper()
    category = TEMPLATES.get(name)
    if category is None:
        guess = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f"; did you mean {guess[0]}?" if guess else f"; known: {', '.join(sorted(TEMPLATES))}"
        raise ctx.error(t, f"unknown layer template {t.name}{hint}")
    conds = [f"n.category = {ctx.bind(category)}"]
    for arg in t.args:
        if not isinstance(arg, str):
            raise ctx.error(t, f"{t.name}(...) takes a string (a kind or a node name pattern) and key=value attributes")
        if name == "POOL":
            kind = POOL_KINDS.get(arg.upper())
            if kind is None:
                raise ctx.error(t, f"POOL takes \"MAX\" or \"AVG\", not {arg!r}")
            conds.append(f"n.kind = {ctx.bind(kind)}")
        else:
            conds.append(f"n.name REGEXP {ctx.bind(_checked_pattern(arg, t, ctx))}")
    for key, value in t.kwargs:
        path = "$." + '"' + key.replace('"', '""') + '"'
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # kernel_size=3 matches [3, 3] too: every element of a list must equal it
            conds.append(
                f"(json_extract(n.attrs, '{path}') = {ctx.bind(value)} OR (json_type(n.attrs, '{path}') = 'array'"
                f" AND NOT EXISTS (SELECT 1 FROM json_each(n.attrs, '{path}') j WHERE j.value != {ctx.bind(value)})))"
            )
        else:
            conds.append(f"json_extract(n.attrs, '{path}') = {ctx.bind(int(value) if isinstance(value, bool) else value)}")
    return " AND ".join(conds)


def _has_layer(node: HasLayer, ctx: _Ctx) -> str:
    nodes = _nodes_sql(node.nodes, ctx)
    cond = _template(node.template, ctx)
    return (
        f"v.graph IN (SELECT s.graph FROM ({nodes}) s JOIN graph_nodes n"
        f" ON n.graph = s.graph AND n.name = s.name WHERE {cond})"
    )


def _count(node: Count, ctx: _Ctx) -> str:
    nodes = _nodes_sql(node.nodes, ctx)
    # counted once per distinct graph (a handful), then looked up per version
    name = f"count_{len(ctx.ctes)}"
    ctx.ctes.append(f"{name}(graph, n) AS MATERIALIZED (SELECT graph, COUNT(DISTINCT name) FROM ({nodes}) GROUP BY graph)")
    return f"COALESCE((SELECT c.n FROM {name} c WHERE c.graph = v.graph), 0)"
