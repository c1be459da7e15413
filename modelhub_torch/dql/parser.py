"""DQL text → statement tree (dataclasses), with errors that point at the column.

The grammar lives in ``dql.lark`` (LALR, so parsing costs microseconds and ambiguity
is caught when the grammar is built, not by users). Every node keeps the position of
its first character, so later stages (unknown field, type mismatch) can point too.
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from modelhub_torch.errors import DQLError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD (one character each, so carets stay
    aligned): an error message must print, whatever the query held."""
    return _SURROGATE.sub("\ufffd", text)


def caret_error(text: str, pos: int | None, message: str) -> DQLError:
    """``message`` followed by the query line and a caret under column ``pos``."""
    if pos is None:
        return DQLError(_printable(message))
    pos = max(0, min(pos, len(text)))
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end >= 0 else len(text)]
    lineno = text.count("\n", 0, pos) + 1
    return DQLError(_printable(f"{message} (line {lineno}, column {pos - start + 1})\n  {line}\n  {' ' * (pos - start)}^"))


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
    bare: bool = False  # written as a bare field: ``where m.resumable``


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
    offset: int | None = None


@dataclass(frozen=True)
class Mutation(Node):
    """``m2.input = m1["conv1"]`` (target field, value nodes), ``m1["x"].insert = RELU()``
    (target nodes + action, value template) or ``m1["x"].delete``."""

    target: Any
    action: str | None
    value: Any


@dataclass(frozen=True)
class Source(Node):
    """What a statement works on: ``from m1`` (every version, as ``m1``), ``from (<statement>)``
    (its results) or ``from "name"`` (a saved statement's results)."""

    var: str | None = None
    statement: Any = None
    saved: str | None = None


@dataclass(frozen=True)
class Derive(Node):
    """slice / construct: a new model ``new`` derived from the versions ``source`` yields."""

    kind: str
    new: str
    source: Source
    where: Any
    mutations: tuple[Mutation, ...]
    name: str | None = None  # as "name": the model the results are committed to


@dataclass(frozen=True)
class VaryItem(Node):
    path: tuple[str, ...]
    values: tuple[Any, ...] | None  # None: "auto"


@dataclass(frozen=True)
class KeepRule(Node):
    """``top(k, m["metric"], n)`` (``call`` = "top", ``args``) or a threshold
    ``m["metric"] > 0.9`` (``call`` = None, ``metric``, ``op``, ``value``)."""

    call: str | None
    args: tuple[Any, ...] = ()
    metric: NodeSet | None = None
    op: str | None = None
    value: Any = None


@dataclass(frozen=True)
class Evaluate(Node):
    var: str
    source: Source
    config: tuple[str, str] | None
    vary: tuple[VaryItem, ...]
    keep: tuple[KeepRule, ...]
    where: Any = None
    name: str | None = None


# SQLite's integers are 64-bit: a larger integer literal is a REAL there, and here
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# the deepest nesting (not, parentheses) a query may have: far beyond any real query,
# well within Python's recursion limit and SQLite's expression depth (1000)
MAX_NESTING = 100

_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[A-Za-z0-9 \-]*\}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
                   "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\n": ""}


def _shown(seq: str) -> str:
    """An escape as the user typed it (quoted), or its repr if it holds a control character."""
    return f"'{seq}'" if seq.isprintable() else repr(seq)


def _escape(m: re.Match[str], text: str, at: int) -> str:
    """One backslash escape of a string literal, as Python reads it; an unknown one
    (``\\q``) stays as written, a malformed one (``\\x4``) is an error at its column."""
    seq = m.group(0)
    if len(seq) == 2 and seq[1] in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[seq[1]]
    if len(seq) == 2 and seq[1] not in "xuUN01234567":
        return seq
    try:
        return codecs.decode(seq, "unicode_escape")
    except UnicodeDecodeError:
        raise caret_error(
            text, at + m.start(),
            f"bad escape {_shown(seq)} in a string: use \\xHH, \\uHHHH, \\UHHHHHHHH, \\N{{name}}, or \\\\ for a backslash",
        ) from None


def _unquote(tok: Token, text: str = "") -> str:
    """The value of a string literal; escapes as in Python. Escaped surrogate pairs
    join into one character, a lone surrogate is an error (SQLite stores UTF-8)."""
    body = str(tok)[1:-1]
    if "\\" not in body:
        return body
    at = (tok.start_pos or 0) + 1
    value = _ESCAPE.sub(lambda m: _escape(m, text, at), body)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise caret_error(
                text, at - 1, "this string holds a lone surrogate (an escape like \\ud800 without its pair), "
                "which is not a character: write the character itself or \\UHHHHHHHH",
            ) from None
    return value


def _number_value(text: str) -> int | float:
    """An integer literal stays an int while SQLite can hold it (64 bits); beyond that,
    and for anything with a point or exponent, a float (``1e400`` is infinity), so a
    huge literal compares as SQLite itself would take it: as a REAL."""
    digits = text.lstrip("+-")
    if digits.isdigit() and len(digits) <= 19:
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    return float(text)


def _pos(x: Any) -> int:
    if isinstance(x, Token):
        return x.start_pos or 0
    return getattr(x, "pos", 0)


@v_args(inline=True)
class _ToTree(Transformer):
    """lark parse tree → the dataclasses above. ``text`` is the query, for errors."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def _unquote(self, tok: Token) -> str:
        return _unquote(tok, self.text)

    def _row_count(self, clause: str, tok: Token) -> int:
        """The number of a limit/offset clause: a whole number SQLite can hold."""
        text = str(tok)
        if not text.lstrip("+").isdigit():
            raise caret_error(self.text, _pos(tok), f"{clause} takes a whole number of versions, 0 or more; not {text}")
        if len(text.lstrip("+0")) > 19 or int(text) > INT64_MAX:
            raise caret_error(self.text, _pos(tok), f"{clause} {text} is out of range: at most {INT64_MAX}")
        return int(text)

    # literals
    def string(self, tok: Token) -> Literal:
        return Literal(self._unquote(tok), pos=_pos(tok))

    def number(self, tok: Token) -> Literal:
        return Literal(_number_value(str(tok)), pos=_pos(tok))

    def true(self, tok: Token) -> Literal:
        return Literal(True, pos=_pos(tok))

    def false(self, tok: Token) -> Literal:
        return Literal(False, pos=_pos(tok))

    # operands
    def field(self, var: Token, *names: Token) -> Field:
        return Field(str(var), tuple(str(n) for n in names), pos=_pos(var))

    def nodeset(self, var: Token, pattern: Token, *steps: Token) -> NodeSet:
        clean = tuple(str(s).lstrip(".").strip().lower() for s in steps)
        return NodeSet(str(var), self._unquote(pattern), clean, pos=_pos(var))

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

    def truth(self, f: Field) -> Compare:
        """A bare field is a condition on its truth: ``where m.resumable`` means
        ``m.resumable = true`` (the compiler refuses it for a field that is not boolean)."""
        return Compare("=", f, Literal(True, pos=f.pos), bare=True, pos=f.pos)

    def like(self, operand: Any, *rest: Token) -> Like:
        return Like(operand, self._unquote(rest[-1]), negate=len(rest) == 3, pos=_pos(operand))

    def ilike(self, operand: Any, *rest: Token) -> Like:
        return Like(operand, self._unquote(rest[-1]), negate=len(rest) == 3, ignore_case=True, pos=_pos(operand))

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
        return ("limit", self._row_count("limit", n))

    def offset_clause(self, _kw: Token, n: Token) -> tuple[str, Any]:
        return ("offset", self._row_count("offset", n))

    def select_stmt(self, kw: Token, var: Token, *clauses: tuple[str, Any]) -> Select:
        c = dict(clauses)
        return Select(str(var), c.get("where"), c.get("order", ()), c.get("limit"), c.get("offset"), pos=_pos(kw))

    # enumeration
    def set_endpoint(self, var: Token, name: Token, nodes: NodeSet) -> Mutation:
        return Mutation(Field(str(var), (str(name),), pos=_pos(var)), None, nodes, pos=_pos(var))

    def edit_nodes(self, nodes: NodeSet, action: Token, template: Template) -> Mutation:
        return Mutation(nodes, str(action).lstrip(".").strip().lower(), template, pos=nodes.pos)

    def drop_nodes(self, nodes: NodeSet, action: Token) -> Mutation:
        return Mutation(nodes, str(action).lstrip(".").strip().lower(), None, pos=nodes.pos)

    def mutations(self, *items: Any) -> tuple[Mutation, ...]:
        return tuple(i for i in items if isinstance(i, Mutation))

    def source_all(self, var: Token) -> Source:
        return Source(var=str(var), pos=_pos(var))

    def source_nested(self, stmt: Any) -> Source:
        return Source(statement=stmt, pos=stmt.pos)

    def source_saved(self, tok: Token) -> Source:
        return Source(saved=self._unquote(tok), pos=_pos(tok))

    def as_clause(self, _kw: Token, name: Token) -> tuple[str, Any]:
        return ("as", self._unquote(name))

    def _derive(self, kind: str, kw: Token, new: Token, _from: Token, source: Source, *rest: Any) -> Derive:
        c = dict(r for r in rest if isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str))
        mutations = next(r for r in rest if isinstance(r, tuple) and (not r or isinstance(r[0], Mutation)))
        return Derive(kind, str(new), source, c.get("where"), mutations, c.get("as"), pos=_pos(kw))

    def slice_stmt(self, *items: Any) -> Derive:
        return self._derive("slice", *items)

    def construct_stmt(self, *items: Any) -> Derive:
        return self._derive("construct", *items)

    def config_clause(self, _kw: Token, name: Token, value: Token) -> tuple[str, Any]:
        return ("config", (str(name), self._unquote(value)))

    def config_path(self, *parts: Token) -> tuple[tuple[str, ...], int]:
        return tuple(self._unquote(p) if p.type == "STRING" else str(p) for p in parts), _pos(parts[0])

    def vary_values(self, path: Any, _in: Token, *values: Literal) -> VaryItem:
        return VaryItem(path[0], tuple(v.value for v in values), pos=path[1])

    def vary_auto(self, path: Any, _auto: Token) -> VaryItem:
        return VaryItem(path[0], None, pos=path[1])

    def vary_clause(self, _kw: Token, *items: Any) -> tuple[str, Any]:
        return ("vary", tuple(i for i in items if isinstance(i, VaryItem)))

    def keep_call(self, name: Token, *args: Any) -> KeepRule:
        return KeepRule(str(name), tuple(a.value if isinstance(a, Literal) else a for a in args), pos=_pos(name))

    def keep_threshold(self, metric: NodeSet, op: Token, value: Literal) -> KeepRule:
        return KeepRule(None, metric=metric, op="!=" if str(op) == "<>" else str(op), value=value.value,
                        pos=metric.pos)

    def keep_clause(self, _kw: Token, *rules: Any) -> tuple[str, Any]:
        return ("keep", tuple(r for r in rules if isinstance(r, KeepRule)))

    def evaluate_stmt(self, kw: Token, var: Token, _from: Token, source: Source, *clauses: Any) -> Evaluate:
        c = dict(clauses)
        return Evaluate(str(var), source, c.get("config"), c.get("vary", ()), c.get("keep", ()),
                        c.get("where"), c.get("as"), pos=_pos(kw))


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("modelhub_torch.dql").joinpath("dql.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=False)


_TERMINAL_WORDS = {
    "VAR": "a name", "NAME": "a name", "STRING": "a string", "SIGNED_NUMBER": "a number",
    "COMP": "a comparison (= != < <= > >=)", "STEP": ".next or .prev",
    "ACTION": ".insert, .delete or .replace", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "DOT": "'.'", "EQUAL": "'='", "$END": "the end of the query",
}


def _expected(names: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(n, n.lower()) for n in names})
    return ", ".join(words[:12]) + (" ..." if len(words) > 12 else "")


def _check_unicode(text: str) -> None:
    """SQLite stores UTF-8: a lone surrogate (possible in a Python str) cannot reach it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise caret_error(
            text, exc.start, f"the query holds {text[exc.start]!r}, a lone surrogate, which is not a "
            "character (a decoding error upstream?); remove it",
        ) from None


def _check_nesting(tree: Tree, text: str) -> None:
    """Refuse trees nested deeper than ``MAX_NESTING`` before anything recurses over them
    (the tree walk itself is iterative)."""
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if depth > MAX_NESTING:
            first = node
            while isinstance(first, Tree) and first.children:
                first = first.children[0]
            raise caret_error(
                text, _pos(first) if isinstance(first, Token) else None,
                f"the query nests more than {MAX_NESTING} levels deep (not, parentheses); "
                "simplify it (e.g. 'not not x' is x)",
            )
        stack.extend((child, depth + 1) for child in node.children)


def parse(text: str) -> Select | Derive | Evaluate:
    """Parse one DQL statement; a ``DQLError`` points at what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise DQLError("empty query: start with 'select m where ...' (see docs/DQL.md)")
    _check_unicode(text)
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
    _check_nesting(tree, text)
    try:
        return _ToTree(text).transform(tree)
    except VisitError as exc:  # lark wraps what a rule raised
        if isinstance(exc.orig_exc, DQLError):
            raise exc.orig_exc from None
        raise
