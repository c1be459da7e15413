"""DQL text → statement tree (dataclasses), with errors that point at the column.

The grammar lives in ``dql.lark`` (LALR, so parsing costs microseconds and ambiguity
is caught when the grammar is built, not by users). Every node keeps the position of
its first character, so later stages (unknown field, type mismatch) can point too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from modelhub_torch.errors import DQLError


def caret_error(text: str, pos: int | None, message: str) -> DQLError:
    """``message`` followed by the query line and a caret under column ``pos``."""
    if pos is None:
        return DQLError(message)
    pos = max(0, min(pos, len(text)))
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end >= 0 else len(text)]
    lineno = text.count("\n", 0, pos) + 1
    return DQLError(f"{message} (line {lineno}, column {pos - start + 1})\n  {line}\n  {' ' * (pos - start)}^")


# ---------------------------------------------------------------------- the tree
@dataclass(frozen=True)
class Node:
    pos: int = field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True)
class Literal(Node):
    value: Any


@dataclass(frozen=True)
class Field(Node):
    var: str
    path: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class NodeSet(Node):
    """``m["pattern"]`` followed by ``.next`` / ``.prev`` steps."""

    var: str
    pattern: str
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Count(Node):
    nodes: NodeSet


@dataclass(frozen=True)
class Template(Node):
    """A layer template: ``POOL("MAX")``, ``CONV(kernel_size=3)``, ``RELU``."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Like(Node):
    operand: Any
    pattern: str
    negate: bool = False
    ignore_case: bool = False


@dataclass(frozen=True)
class InList(Node):
    operand: Any
    values: tuple[Any, ...]
    negate: bool = False


@dataclass(frozen=True)
class IsNull(Node):
    operand: Any
    negate: bool = False


@dataclass(frozen=True)
class HasLayer(Node):
    nodes: NodeSet
    template: Template


@dataclass(frozen=True)
class HasValue(Node):
    field: Field
    value: Literal


@dataclass(frozen=True)
class BoolOp(Node):
    op: str  # "and" | "or"
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not(Node):
    item: Any


@dataclass(frozen=True)
class OrderItem(Node):
    operand: Any
    descending: bool = False


@dataclass(frozen=True)
class Select(Node):
    var: str
    where: Any = None
    order: tuple[OrderItem, ...] = ()
    limit: int | None = None


@dataclass(frozen=True)
class Mutation(Node):
    """``m2.input = m1["conv1"]`` (target field, value nodes), ``m1["x"].insert = RELU()``
    (target nodes + action, value template) or ``m1["x"].delete``."""

    target: Any
    action: str | None
    value: Any


@dataclass(frozen=True)
class Derive(Node):
    """slice / construct: a new model ``new`` derived from the models ``source`` matches."""

    kind: str
    new: str
    source: str
    where: Any
    mutations: tuple[Mutation, ...]


@dataclass(frozen=True)
class VaryItem(Node):
    path: tuple[str, ...]
    values: tuple[Any, ...] | None  # None: "auto"


@dataclass(frozen=True)
class Evaluate(Node):
    var: str
    source: str
    config: tuple[str, str] | None
    vary: tuple[VaryItem, ...]
    keep: tuple[str, tuple[Any, ...]] | None


def _unquote(tok: Token) -> str:
    body = str(tok)[1:-1]
    return body.encode("utf-8").decode("unicode_escape") if "\\" in body else body


def _pos(x: Any) -> int:
    if isinstance(x, Token):
        return x.start_pos or 0
    return getattr(x, "pos", 0)


@v_args(inline=True)
class _ToTree(Transformer):
    """lark parse tree → the dataclasses above."""

    # literals
    def string(self, tok: Token) -> Literal:
        return Literal(_unquote(tok), pos=_pos(tok))

    def number(self, tok: Token) -> Literal:
        text = str(tok)
        value: Any = int(text) if text.lstrip("+-").isdigit() else float(text)
        return Literal(value, pos=_pos(tok))

    def true(self, tok: Token) -> Literal:
        return Literal(True, pos=_pos(tok))

    def false(self, tok: Token) -> Literal:
        return Literal(False, pos=_pos(tok))

    # operands
    def field(self, var: Token, *names: Token) -> Field:
        return Field(str(var), tuple(str(n) for n in names), pos=_pos(var))

    def nodeset(self, var: Token, pattern: Token, *steps: Token) -> NodeSet:
        clean = tuple(str(s).lstrip(".").strip().lower() for s in steps)
        return NodeSet(str(var), _unquote(pattern), clean, pos=_pos(var))

    def count(self, kw: Token, nodes: NodeSet) -> Count:
        return Count(nodes, pos=_pos(kw))

    def template(self, name: Token, args: Any = None) -> Template:
        positional, keywords = [], []
        for a in args or ():
            if isinstance(a, tuple):
                keywords.append(a)
            else:
                positional.append(a.value)
        return Template(str(name), tuple(positional), tuple(keywords), pos=_pos(name))

    def template_args(self, *items: Any) -> tuple[Any, ...]:
        return items

    def positional(self, lit: Literal) -> Literal:
        return lit

    def keyword(self, name: Token, lit: Literal) -> tuple[str, Any]:
        return (str(name), lit.value)

    # predicates
    def compare(self, left: Any, op: Token, right: Any) -> Compare:
        return Compare("!=" if str(op) == "<>" else str(op), left, right, pos=_pos(left))

    def like(self, operand: Any, *rest: Token) -> Like:
        return Like(operand, _unquote(rest[-1]), negate=len(rest) == 3, pos=_pos(operand))

    def ilike(self, operand: Any, *rest: Token) -> Like:
        return Like(operand, _unquote(rest[-1]), negate=len(rest) == 3, ignore_case=True, pos=_pos(operand))

    def in_list(self, operand: Any, *rest: Any) -> InList:
        negate = isinstance(rest[0], Token) and rest[0].type == "NOT"
        values = tuple(r for r in rest if isinstance(r, Literal))
        return InList(operand, values, negate=negate, pos=_pos(operand))

    def is_null(self, operand: Any, *rest: Token) -> IsNull:
        return IsNull(operand, negate=any(t.type == "NOT" for t in rest), pos=_pos(operand))

    def has_layer(self, nodes: NodeSet, _kw: Token, template: Template) -> HasLayer:
        return HasLayer(nodes, template, pos=nodes.pos)

    def has_value(self, f: Field, _kw: Token, value: Literal) -> HasValue:
        return HasValue(f, value, pos=f.pos)

    def negation(self, kw: Token, item: Any) -> Not:
        return Not(item, pos=_pos(kw))

    def and_expr(self, *items: Any) -> BoolOp:
        parts = tuple(i for i in items if not isinstance(i, Token))
        return BoolOp("and", parts, pos=_pos(parts[0]))

    def or_expr(self, *items: Any) -> BoolOp:
        parts = tuple(i for i in items if not isinstance(i, Token))
        return BoolOp("or", parts, pos=_pos(parts[0]))

    # clauses
    def where_clause(self, _kw: Token, expr: Any) -> tuple[str, Any]:
        return ("where", expr)

    def direction(self, tok: Token) -> bool:
        return str(tok).lower() == "desc"

    def order_item(self, operand: Any, descending: bool = False) -> OrderItem:
        return OrderItem(operand, bool(descending), pos=_pos(operand))

    def order_clause(self, _order: Token, _by: Token, *items: OrderItem) -> tuple[str, Any]:
        return ("order", tuple(items))

    def limit_clause(self, _kw: Token, n: Token) -> tuple[str, Any]:
        return ("limit", int(str(n)))

    def select_stmt(self, kw: Token, var: Token, *clauses: tuple[str, Any]) -> Select:
        c = dict(clauses)
        return Select(str(var), c.get("where"), c.get("order", ()), c.get("limit"), pos=_pos(kw))

    # enumeration
    def set_endpoint(self, var: Token, name: Token, nodes: NodeSet) -> Mutation:
        return Mutation(Field(str(var), (str(name),), pos=_pos(var)), None, nodes, pos=_pos(var))

    def edit_nodes(self, nodes: NodeSet, action: Token, template: Template) -> Mutation:
        return Mutation(nodes, str(action).lstrip(".").strip().lower(), template, pos=nodes.pos)

    def drop_nodes(self, nodes: NodeSet, action: Token) -> Mutation:
        return Mutation(nodes, str(action).lstrip(".").strip().lower(), None, pos=nodes.pos)

    def mutations(self, *items: Any) -> tuple[Mutation, ...]:
        return tuple(i for i in items if isinstance(i, Mutation))

    def _derive(self, kind: str, kw: Token, new: Token, _from: Token, source: Token, *rest: Any) -> Derive:
        where = next((r[1] for r in rest if isinstance(r, tuple) and r and r[0] == "where"), None)
        mutations = rest[-1]
        return Derive(kind, str(new), str(source), where, mutations, pos=_pos(kw))

    def slice_stmt(self, *items: Any) -> Derive:
        return self._derive("slice", *items)

    def construct_stmt(self, *items: Any) -> Derive:
        return self._derive("construct", *items)

    def config_clause(self, _kw: Token, name: Token, value: Token) -> tuple[str, Any]:
        return ("config", (str(name), _unquote(value)))

    def config_path(self, *parts: Token) -> tuple[str, ...]:
        return tuple(_unquote(p) if p.type == "STRING" else str(p) for p in parts)

    def vary_values(self, path: tuple[str, ...], _in: Token, *values: Literal) -> VaryItem:
        return VaryItem(path, tuple(v.value for v in values))

    def vary_auto(self, path: tuple[str, ...], _auto: Token) -> VaryItem:
        return VaryItem(path, None)

    def vary_clause(self, _kw: Token, *items: Any) -> tuple[str, Any]:
        return ("vary", tuple(i for i in items if isinstance(i, VaryItem)))

    def keep_clause(self, _kw: Token, name: Token, *args: Any) -> tuple[str, Any]:
        return ("keep", (str(name), tuple(a.value if isinstance(a, Literal) else a for a in args)))

    def evaluate_stmt(self, kw: Token, var: Token, _from: Token, source: Token, *clauses: Any) -> Evaluate:
        c = dict(clauses)
        return Evaluate(str(var), _unquote(source), c.get("config"), c.get("vary", ()), c.get("keep"), pos=_pos(kw))


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("modelhub_torch.dql").joinpath("dql.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=False)


_TERMINAL_WORDS = {
    "VAR": "a name", "NAME": "a name", "STRING": "a string", "SIGNED_NUMBER": "a number",
    "INT": "an integer", "COMP": "a comparison (= != < <= > >=)", "STEP": ".next or .prev",
    "ACTION": ".insert, .delete or .replace", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "DOT": "'.'", "EQUAL": "'='", "$END": "the end of the query",
}


def _expected(names: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(n, n.lower()) for n in names})
    return ", ".join(words[:12]) + (" ..." if len(words) > 12 else "")


def parse(text: str) -> Select | Derive | Evaluate:
    """Parse one DQL statement; a ``DQLError`` points at what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise DQLError("empty query: start with 'select m where ...' (see docs/DQL.md)")
    try:
        tree = _parser().parse(text)
    except UnexpectedEOF as exc:
        raise caret_error(text, len(text), f"the query ends too early; expected {_expected(set(exc.expected))}") from None
    except UnexpectedToken as exc:
        got = "the end of the query" if exc.token.type == "$END" else repr(str(exc.token))
        raise caret_error(
            text, exc.pos_in_stream if exc.token.type != "$END" else len(text),
            f"unexpected {got}; expected {_expected(set(exc.expected))}",
        ) from None
    except UnexpectedCharacters as exc:
        raise caret_error(
            text, exc.pos_in_stream,
            f"unexpected character {text[exc.pos_in_stream]!r}; expected {_expected(set(exc.allowed or ()))}",
        ) from None
    except UnexpectedInput as exc:  # pragma: no cover - other lark errors carry a position too
        raise caret_error(text, getattr(exc, "pos_in_stream", None), f"cannot parse the query: {exc}") from None
    return _ToTree().transform(tree)
