"""DQL at the edges: literals SQLite cannot hold, limit/offset, escapes, nesting, very
long queries, the m.resumable / m.pickle fields, and a fuzz test: whatever the query
text, Repository.query gives a result or a DQLError, never another exception."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from modelhub_torch import Repository
from modelhub_torch.dql import DQLError, QueryResult, parse
from modelhub_torch.dql.compiler import compile_select

DOC = Path(__file__).resolve().parent.parent / "docs" / "DQL.md"
HUGE = "99999999999999999999999999999"  # > 2**63: SQLite's integers end at 2**63 - 1
STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks")


def _lightning_checkpoint(epoch: int) -> dict:
    """A small checkpoint shaped like Lightning's (what ModelHubCheckpoint commits)."""
    torch.manual_seed(epoch)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {
        "epoch": epoch, "global_step": 10 * (epoch + 1), "pytorch-lightning_version": "2.6.6",
        "state_dict": model.state_dict(), "loops": {"fit_loop": {}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repository:
    """cnn v1-v2 (a network, a 10**30 hparam, an emoji message), run v1-v2 (Lightning
    checkpoints, v1 pruned), pickled v1 (allow_pickle), plain v1 (a bare dict)."""
    torch.manual_seed(0)
    r = Repository.init(tmp_path_factory.mktemp("dql-limits") / "hub")
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    r.commit(net, "cnn", metrics={"acc": 0.5, "big": 10**30}, hparams={"lr": 0.1, "width": 4})
    r.commit(net, "cnn", metrics={"acc": 0.7, "big": 2.0}, hparams={"lr": 0.01, "width": 10**30}, message="😀")
    for epoch in (0, 1):
        r.commit(_lightning_checkpoint(epoch), "run", info={"trainer_state": True})
    r.prune("run@v1", STATE_KEYS)
    r.commit({"w": torch.ones(2), "args": argparse.Namespace(a=1)}, "pickled", allow_pickle=True)
    r.commit({"w": torch.ones(3)}, "plain")
    return r


def refs(repo: Repository, query: str) -> list[str]:
    return repo.query(query).refs


def error(repo: Repository, query: str) -> str:
    with pytest.raises(DQLError) as exc:
        repo.query(query)
    return str(exc.value)


def caret_column(message: str) -> int:
    """1-based column of the caret an error draws under the query line."""
    return message.splitlines()[-1].index("^") - 1


# ----------------------------------------------------------------- big numbers
def test_integer_literals_beyond_64_bits_compare(repo: Repository) -> None:
    all_refs = ["cnn@v1", "cnn@v2", "pickled@v1", "plain@v1", "run@v1", "run@v2"]
    assert refs(repo, f"select m where m.version > {HUGE}") == []
    assert refs(repo, f"select m where m.version < {HUGE}") == all_refs
    assert refs(repo, f"select m where m.version > -{HUGE}") == all_refs
    assert refs(repo, "select m where m.version < 1e400") == all_refs  # infinity
    assert refs(repo, "select m where m.params > 9223372036854775807") == []  # int64 max still an int
    # a number of 5000 digits (beyond Python's int-from-text limit) is infinity too
    assert refs(repo, "select m where m.params < 1" + "0" * 5000) == all_refs
    # JSON values: 10**30 is stored exactly and compares with the same huge literal
    assert refs(repo, "select m where m.metrics.big = 1000000000000000000000000000000") == ["cnn@v1"]
    assert refs(repo, f"select m where m.metrics.big > {HUGE}") == ["cnn@v1"]
    assert refs(repo, f"select m where m.hparams.width >= {HUGE}") == ["cnn@v2"]


def test_huge_literals_in_every_place_a_literal_reaches_sqlite(repo: Repository) -> None:
    assert refs(repo, f"select m where m.hparams.lr in ({HUGE}, 0.1)") == ["cnn@v1"]
    assert refs(repo, f"select m where m.version not in ({HUGE}, 2)") == ["cnn@v1", "pickled@v1", "plain@v1", "run@v1"]
    assert refs(repo, f'select m where count(m["*"]) >= {HUGE}') == []
    assert refs(repo, f'select m where count(m["*"]) < {HUGE} and m.name = "cnn"') == ["cnn@v1", "cnn@v2"]
    assert refs(repo, f'select m where m["*"] has CONV(out_channels={HUGE})') == []
    assert refs(repo, 'select m where m["*"] has CONV(out_channels=4)') == ["cnn@v1", "cnn@v2"]
    assert refs(repo, f"select m where {HUGE} > m.version and m.name = \"plain\"") == ["plain@v1"]
    assert refs(repo, f'select m where m.name = "cnn" order by {HUGE}, m.version desc') == ["cnn@v2", "cnn@v1"]


# ---------------------------------------------------------------- limit, offset
@pytest.mark.parametrize("clause,number,message", [
    ("limit", "99999999999999999999999", "limit 99999999999999999999999 is out of range: at most 9223372036854775807"),
    ("limit", "9223372036854775808", "limit 9223372036854775808 is out of range: at most 9223372036854775807"),
    ("limit", "-1", "limit takes a whole number of versions, 0 or more; not -1"),
    ("limit", "1.5", "limit takes a whole number of versions, 0 or more; not 1.5"),
    ("limit", "1e3", "limit takes a whole number of versions, 0 or more; not 1e3"),
    ("offset", "99999999999999999999999", "offset 99999999999999999999999 is out of range: at most 9223372036854775807"),
    ("offset", "-3", "offset takes a whole number of versions, 0 or more; not -3"),
])
def test_bad_limit_and_offset_point_at_the_number(repo: Repository, clause: str, number: str, message: str) -> None:
    query = f'select m where m.name like "c%" {clause} {number}'
    msg = error(repo, query)
    assert msg.splitlines()[0] == f"{message} (line 1, column {query.index(number) + 1})"
    assert caret_column(msg) == query.index(number) + 1
    assert "internal error" not in msg


def test_limit_and_offset(repo: Repository) -> None:
    assert refs(repo, "select m limit 2") == ["cnn@v1", "cnn@v2"]
    assert refs(repo, "select m limit 2 offset 1") == ["cnn@v2", "pickled@v1"]
    assert refs(repo, "select m offset 4") == ["run@v1", "run@v2"]
    assert refs(repo, "select m limit 0") == []
    assert refs(repo, "select m limit 9223372036854775807 offset 9223372036854775807") == []
    assert refs(repo, "select m order by m.version desc limit +1") == ["cnn@v2"]


# ------------------------------------------------------------- strings, escapes
def test_string_escapes(repo: Repository) -> None:
    assert refs(repo, r'select m where m.message = "\ud83d\ude00"') == ["cnn@v2"]  # a pair joins
    assert refs(repo, r'select m where m.message = "\U0001F600"') == ["cnn@v2"]
    assert refs(repo, 'select m where m.message = "😀"') == ["cnn@v2"]
    assert refs(repo, r'select m where m.message like "😀\x25"') == ["cnn@v2"]  # non-ASCII beside an escape
    assert refs(repo, r'select m where m.name = "\x63nn\N{LATIN SMALL LETTER A}"') == []
    assert refs(repo, r'select m where m.name like "c\x6En"') == ["cnn@v1", "cnn@v2"]
    query = r'select m where m.name = "ab\x4"'
    msg = error(repo, query)
    assert msg.startswith(r"bad escape '\x' in a string: use \xHH, \uHHHH")
    assert caret_column(msg) == query.index("\\") + 1
    msg = error(repo, r'select m where m.name = "\ud800"')
    assert msg.startswith("this string holds a lone surrogate") and caret_column(msg) == 25


def test_a_surrogate_in_the_query_text_is_a_printable_error(repo: Repository) -> None:
    msg = error(repo, 'select m where m.name = "\ud800"')
    assert msg.startswith("the query holds '\\ud800', a lone surrogate") and caret_column(msg) == 26
    msg.encode("utf-8")  # printable: the CLI writes it to stderr


def test_bad_node_patterns_are_query_errors(repo: Repository) -> None:
    query = 'select m where m["*"] has RELU("relu[z-a]")'
    msg = error(repo, query)
    assert msg.startswith("bad node pattern 'relu[z-a]': bad character range z-a")
    assert caret_column(msg) == query.index("RELU") + 1
    assert error(repo, 'select m where m["[z-a]"].next has CONV').startswith("bad node pattern '[z-a]'")


# ------------------------------------------------------------ size and nesting
def test_nesting_is_bounded_with_a_clear_error(repo: Repository) -> None:
    msg = error(repo, "select m where " + "not " * 3000 + "m.version = 1")
    assert msg.startswith("the query nests more than 100 levels deep (not, parentheses)")
    assert refs(repo, "select m where " + "not " * 40 + 'm.name = "plain"') == ["plain@v1"]
    # alternating and/or 60 deep: within our limit, beyond SQLite's parser stack; an
    # error of the query's shape, so the index is not taken for damaged (no warning)
    deep = "select m where " + "m.version = 1 and (m.version = 1 or (" * 30 + "m.version = 1" + "))" * 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = error(repo, deep)
    assert msg.startswith("the query nests too deeply for SQLite (parser stack overflow); use fewer nested parentheses")


def test_long_queries_run(repo: Repository) -> None:
    chain = " and ".join(["m.version >= 1"] * 3000)  # a flat chain: a balanced tree in SQL
    assert refs(repo, f'select m where {chain} and m.name = "plain"') == ["plain@v1"]
    nested = 'select m where m.name = "plain"' + " and (m.version = 1" * 80 + ")" * 80  # same op: flattened
    assert refs(repo, nested) == ["plain@v1"]
    walk = 'select m where count(m["*"]' + ".next" * 150 + ") = 0 and m.version = 2"
    assert refs(repo, walk) == ["cnn@v2", "run@v2"]
    assert refs(repo, 'select m where m["0"].next.next has POOL("MAX")') == ["cnn@v1", "cnn@v2"]
    values = ", ".join(str(n) for n in range(3, 30003))
    assert refs(repo, f"select m where m.version in ({values}, 2)") == ["cnn@v2", "run@v2"]


def test_parameters_are_positional() -> None:
    """Named (:p1) and numbered (?1) parameters cost SQLite a search among the earlier
    ones (a 40000-value list took seconds); plain '?' are bound in text order."""
    text = 'select m where m.hparams.lr in (0.1, 0.2) and m["a*"].next has CONV(kernel_size=3) order by count(m["b"])'
    compiled = compile_select(parse(text), text, lambda ref: ref)
    assert re.search(r"\?\d|:p\d", compiled.sql) is None
    assert compiled.sql.count("?") == len(compiled.params)
    # text order: the CTEs (the walk, the count) come first, then the where clause
    assert compiled.params == ["^a(.*)$", "^b$", 0.1, 0.2, "conv", 3, 3]


def test_more_literals_than_sqlite_binds(repo: Repository) -> None:
    conn = repo.catalog.connection()
    before = conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
    try:
        values = ", ".join(str(n) for n in range(101))
        msg = error(repo, f"select m where m.version in ({values})")
    finally:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)
    assert msg == ("the query has 101 literals and patterns; SQLite takes at most 100 in one query: "
                   "split long 'in (...)' lists over several queries")


# ------------------------------------------------------- m.resumable, m.pickle
def test_resumable_and_pickle_fields(repo: Repository) -> None:
    assert refs(repo, "select m where m.resumable = true") == ["run@v2"]
    assert refs(repo, "select m where m.resumable = false") == ["run@v1"]
    assert refs(repo, "select m where not m.resumable = true") == ["run@v1"]  # null is unknown
    assert refs(repo, "select m where m.resumable is null") == ["cnn@v1", "cnn@v2", "pickled@v1", "plain@v1"]
    assert refs(repo, "select m where m.resumable in (true, false)") == ["run@v1", "run@v2"]
    assert refs(repo, "select m where m.pickle = true") == ["pickled@v1"]
    # a bare true/false field is short for "= true"
    assert refs(repo, "select m where m.resumable") == ["run@v2"]
    assert refs(repo, "select m where not m.resumable") == ["run@v1"]
    assert refs(repo, "select m where m.pickle or (m.resumable and m.version = 2)") == ["pickled@v1", "run@v2"]
    assert refs(repo, "select m where m.info.trainer_state") == ["run@v2"]  # JSON true
    assert refs(repo, "select m where m.pickle != true and m.name like \"p%\"") == ["plain@v1"]
    assert refs(repo, "select m where m.name = \"run\" order by m.resumable desc") == ["run@v2", "run@v1"]
    # prune turned the pruned version's recorded trainer_state false, in the index too
    assert refs(repo, "select m where m.info.trainer_state = false") == ["run@v1"]
    assert repo.version("run@v1").info["trainer_state"] is False
    assert repo.version("run@v2").info["trainer_state"] is True


@pytest.mark.parametrize("query,message", [
    ("select m where m.resumable = 1", "m.resumable is true or false; compare it with true or false, not a number"),
    ('select m where m.pickle != "yes"', "m.pickle is true or false; compare it with true or false, not a text"),
    ("select m where m.version = true", "m.version is a number; compare it with a number, not true or false"),
    ('select m where m.resumable like "t%"', "like compares text, and m.resumable is true or false"),
    ("select m where m.pickle in (true, 0)", "m.pickle is true or false; list only true and false"),
    ("select m where m.resumabel = true", "unknown field m.resumabel; did you mean m.resumable?"),
    ("select m where m.version", "m.version alone is a condition only for a true/false field, and it is a number; write m.version > 0"),
    ('select m where m.name and m.pickle', 'm.name alone is a condition only for a true/false field, and it is a text; write m.name = "..."'),
])
def test_boolean_fields_are_typed(repo: Repository, query: str, message: str) -> None:
    assert error(repo, query).splitlines()[0].startswith(message)


def test_the_doc_shows_the_new_constructs() -> None:
    text = DOC.read_text()
    blocks = " ".join(re.findall(r"```dql\n(.*?)```", text, flags=re.S))
    for construct in ("m.resumable", "m.pickle", "offset", "limit -1", "99999999999999999999999"):
        assert construct in blocks, construct
    assert "| `m.resumable` | boolean |" in text and "| `m.pickle` | boolean |" in text


# ------------------------------------------------------------------ the fuzz test
def _doc_queries() -> list[str]:
    found = re.findall(r"```dql\n(.*?)```", DOC.read_text(), flags=re.S)
    return [q.strip() for q in found] + [
        'select m where m.resumable = true and m.pickle = false order by m.version desc limit 2 offset 1',
        f'select m where m.hparams.lr in ({HUGE}, 0.1, "x", true) or count(m["c*"].prev) >= 2',
        'select m where m.tags like "b%" or m.ancestors has "cnn@v1" or m.descendants has "run@latest"',
        r'select m where m.message ilike "%\u00e9%" and m["*"] has CONV(kernel_size=3, bias=true)',
    ]


QUERIES = _doc_queries()
TOKENS = [
    "select", "m", "m1", "where", "order", "by", "asc", "desc", "limit", "offset", "and", "or",
    "not", "like", "ilike", "in", "is", "null", "has", "count", "true", "false", "slice",
    "construct", "evaluate", "from", "mutate", "with", "vary", "auto", "keep",
    "m.name", "m.version", "m.params", "m.resumable", "m.pickle", "m.tags", "m.ancestors",
    "m.metrics.acc", "m.hparams.lr", "m.info.epoch", "m.nmae", 'm["conv*"]', 'm["*"].next',
    'm["[z-a]"]', ".next", ".prev", ".insert", "CONV", 'POOL("MAX")', "RELU", "POOLING",
    "CONV(kernel_size=3)", "=", "!=", "<>", "<", "<=", ">", ">=", "(", ")", ",", "[", "]", ".",
    "--", "\n", "0", "-1", "1.5", "1e400", "-1e400", HUGE, "-" + HUGE, "9223372036854775808",
    '"cnn"', "'x'", '"%"', r'"\x4"', r'"\ud800"', r'"\N{bogus}"', '"\\"', '"', "'", "$1", "@", "😀",
    "\ud800", "\x00",
]


def _check(repo: Repository, text: str) -> None:
    try:
        result = repo.query(text)
    except DQLError as exc:
        msg = str(exc)
        msg.encode("utf-8")  # the message prints
        assert "internal error" not in msg, (text, msg)  # SQL the compiler got wrong
        return
    assert isinstance(result, QueryResult)
    result.to_dicts()


def _mutate(data: st.DataObject, text: str) -> str:
    """One edit of a valid query: delete, duplicate or replace a span, or insert a token."""
    n = len(text)
    i = data.draw(st.integers(0, n))
    j = data.draw(st.integers(i, min(n, i + 12)))
    kind = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
    if kind == "delete":
        return text[:i] + text[j:]
    if kind == "duplicate":
        return text[:j] + text[i:j] + text[j:]
    piece = data.draw(st.sampled_from(TOKENS) | st.text(max_size=3))
    if kind == "insert":
        return f"{text[:i]} {piece} {text[i:]}"
    return text[:i] + piece + text[j:]


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_queries(repo: Repository, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(QUERIES))
    for _ in range(data.draw(st.integers(1, 3))):
        text = _mutate(data, text)
    _check(repo, text)


@FUZZ
@given(tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25))
def test_fuzz_token_soup(repo: Repository, tokens: list[str]) -> None:
    _check(repo, "select m where " + " ".join(tokens))
    _check(repo, " ".join(tokens))


@FUZZ
@given(text=st.text(max_size=60))
def test_fuzz_any_text(repo: Repository, text: str) -> None:
    _check(repo, text)
    _check(repo, f"select m where m.name = {text}")


# queries built from the grammar, so most reach the compiler and SQLite
FIELDS = ["m.name", "m.version", "m.ref", "m.id", "m.created", "m.parent", "m.message", "m.params",
          "m.size", "m.raw_size", "m.resumable", "m.pickle", "m.metrics.acc", "m.metrics.big",
          "m.hparams.lr", "m.hparams.width", "m.info.trainer_state", "m.info.epoch", "m.tags",
          "m.ancestors", "m.descendants", "m.unknown", "m.metrics"]
NUMBERS = st.one_of(st.integers(-(10**40), 10**40), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([HUGE, "1e400", "-1e400", "9223372036854775808", "-9223372036854775809"]))
STRINGS = st.one_of(st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False)),
                    st.text(max_size=8).map(json.dumps), st.sampled_from(['"cnn@v1"', '"run@latest"', '"%n%"', r'"\x4"']))
LITERALS = st.one_of(NUMBERS.map(str), STRINGS, st.sampled_from(["true", "false"]))
PATTERNS = st.one_of(st.sampled_from(["*", "0", "[1,3]", "[0-2]", "?", "[z-a]", "conv*($1)", "("]),
                     st.text(alphabet="*?[],-()$1a.", max_size=6))
NODESETS = st.builds(lambda p, steps: f"m[{json.dumps(p)}]" + "".join(steps), PATTERNS,
                     st.lists(st.sampled_from([".next", ".prev", ".NEXT", ". prev"]), max_size=4))
TEMPLATES = st.one_of(st.sampled_from(["CONV", "POOL", 'POOL("MAX")', 'POOL("min")', "RELU", "LINEAR", "FLATTEN",
                                       "POOLING", "CONV(kernel_size=3)", "CONV(kernel_size=[3])", "RELU(1)"]),
                      st.builds(lambda k, v: f"CONV({k}={v})", st.sampled_from(["kernel_size", "bias", "x"]), LITERALS))
OPERANDS = st.one_of(st.sampled_from(FIELDS), LITERALS, NODESETS.map(lambda n: f"count({n})"))
PREDICATES = st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} {b}", OPERANDS, st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="]), OPERANDS),
    st.builds(lambda a, neg, op, pat: f"{a} {neg}{op} {pat}", OPERANDS, st.sampled_from(["", "not "]),
              st.sampled_from(["like", "ilike"]), STRINGS),
    st.builds(lambda a, neg, vs: f"{a} {neg}in ({', '.join(vs)})", OPERANDS, st.sampled_from(["", "not "]),
              st.lists(LITERALS, min_size=1, max_size=4)),
    st.builds(lambda a, neg: f"{a} is {neg}null", OPERANDS, st.sampled_from(["", "not "])),
    st.builds(lambda n, t: f"{n} has {t}", NODESETS, TEMPLATES),
    st.builds(lambda f, v: f"{f} has {v}", st.sampled_from(["m.tags", "m.ancestors", "m.descendants", "m.name"]), LITERALS),
)
CONDITIONS = st.recursive(PREDICATES, lambda inner: st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["and", "or"]), inner),
    inner.map(lambda c: f"not {c}"),
    inner.map(lambda c: f"({c})"),
), max_leaves=6)
SELECTS = st.builds(
    lambda cond, order, limit, offset: f"select m{cond}{order}{limit}{offset}",
    st.one_of(st.just(""), CONDITIONS.map(lambda c: f" where {c}")),
    st.one_of(st.just(""), st.lists(st.builds(lambda o, d: f"{o}{d}", OPERANDS, st.sampled_from(["", " asc", " desc"])),
                                    min_size=1, max_size=2).map(lambda xs: " order by " + ", ".join(xs))),
    st.one_of(st.just(""), NUMBERS.map(lambda n: f" limit {n}")),
    st.one_of(st.just(""), st.integers(-3, 10**20).map(lambda n: f" offset {n}")),
)


@FUZZ
@given(query=SELECTS)
def test_fuzz_queries_from_the_grammar(repo: Repository, query: str) -> None:
    _check(repo, query)
