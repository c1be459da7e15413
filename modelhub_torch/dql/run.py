"""Run any DQL statement on a store: ``select`` through the catalog, ``slice`` /
``construct`` through ``derive``, ``evaluate`` through the trials engine; statements
nest (``from (<statement>)``) and run on saved ones (``from "name"``).

Everything here takes the store, not the ``Repository`` facade (which calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from modelhub_torch.dql.engine import QueryResult, execute_select
from modelhub_torch.dql.parser import (
    Derive,
    Evaluate,
    KeepRule,
    NodeSet,
    Select,
    Source,
    caret_error,
    parse,
)
from modelhub_torch.errors import DQLError
from modelhub_torch.records import Version
from modelhub_torch.resolution import resolve
from modelhub_torch.store.repo import RepoStore

# saved statements naming saved statements: deep enough for any real use, and a cycle
# ("a" from "b", "b" from "a") stops here with a clear error
MAX_SAVED_DEPTH = 16


@dataclass(frozen=True)
class Options:
    """How ``evaluate`` runs: ``executor`` "embedded" (``workers`` processes, 1 =
    sequential) or "ray" (Ray Tune); ``imports``: modules a config's ``class_path`` may
    name; ``dry_run``: list the trials and train nothing."""

    executor: str = "embedded"
    workers: int = 1
    imports: tuple[str, ...] = ()
    dry_run: bool = False


class Runner:
    def __init__(self, store: RepoStore, tags: Callable[[], Iterable[tuple[str, str]]], options: Options):
        self.store = store
        self.tags = tags
        self.options = options

    def run(self, text: str) -> QueryResult:
        return self._statement(parse(text), text, ())

    # ------------------------------------------------------------------ dispatch
    def _statement(self, stmt: Any, text: str, saved: tuple[str, ...]) -> QueryResult:
        if isinstance(stmt, Select):
            return self._select(stmt, text)
        if isinstance(stmt, Derive):
            return self._derive(stmt, text, saved)
        assert isinstance(stmt, Evaluate)
        return self._evaluate(stmt, text, saved)

    def _select(self, stmt: Select, text: str) -> QueryResult:
        return execute_select(self.store.catalog.connection(), stmt, text, lambda ref: resolve(self.store, ref),
                              self.tags, self.store.version_of_row)

    def _rows(self, ids: list[str | None]) -> list[Any]:
        rows = []
        for vid in ids:
            if vid is None:
                rows.append(None)
                continue
            row = self.store.catalog.row(vid)
            if row is None:
                self.store.index(vid)
                row = self.store.catalog.row(vid)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ sources
    def _sources(self, source: Source, where: Any, text: str, saved: tuple[str, ...]) -> tuple[str, list[Version]]:
        """The variable a statement's where/mutations use and the versions it works on."""
        if source.var is not None:
            return source.var, list(self._select(Select(source.var, where, pos=source.pos), text))
        if source.statement is not None:
            inner, inner_text = source.statement, text
            result = self._statement(inner, text, saved)
        else:
            name = str(source.saved)
            if name in saved or len(saved) >= MAX_SAVED_DEPTH:
                chain = " -> ".join([*saved, name])
                raise caret_error(text, source.pos, f"saved statements run on each other in a circle ({chain}); "
                                  "save one that starts from the versions themselves")
            from modelhub_torch.dql.saved import load_query

            try:
                inner_text = load_query(self.store, name)
            except DQLError as exc:
                raise caret_error(text, source.pos, str(exc)) from None
            inner = parse(inner_text)
            result = self._statement(inner, inner_text, (*saved, name))
        var = _output_var(inner)
        found = [v for v in result if v is not None]
        if isinstance(inner, Evaluate):  # an evaluation yields the trials it kept
            kept = {d["ref"] for d in result.to_dicts() if d.get("status") == "kept"}
            found = [v for v in found if v.ref in kept]
        if where is not None:
            ids = {v.id for v in self._select(Select(var, where, pos=source.pos), text)}
            found = [v for v in found if v.id in ids]
        return var, found

    # ------------------------------------------------------------------ slice / construct
    def _derive(self, stmt: Derive, text: str, saved: tuple[str, ...]) -> QueryResult:
        from modelhub_torch.dql.derive import derive

        var, sources = self._sources(stmt.source, stmt.where, text, saved)
        results = derive(self.store, stmt, text, sources, var)
        values = [{"source": r.source, "status": r.status, "edits": "; ".join(r.edits)} for r in results]
        return QueryResult(self._rows([r.version_id for r in results]), ["source", "status", "edits"],
                           self.store.version_of_row, values, statement=stmt.kind)

    # ------------------------------------------------------------------ evaluate
    def _evaluate(self, stmt: Evaluate, text: str, saved: tuple[str, ...]) -> QueryResult:
        from modelhub_torch.trials import EvaluationError, plan_evaluation, run_evaluation

        _, sources = self._sources(stmt.source, stmt.where, text, saved)
        vary = [self._vary(item, i, text) for i, item in enumerate(stmt.vary)]
        keep = [self._keep(rule, stmt.var, text) for rule in stmt.keep]
        config = None
        if stmt.config is not None:
            key, config = stmt.config
            if key != "config":
                raise caret_error(text, stmt.pos, f"evaluate takes 'with config = \"file.yaml\"', not {key!r}")
        if not sources:
            raise caret_error(text, stmt.source.pos, "nothing to evaluate: the source gives no versions")
        try:
            plan = plan_evaluation(self.store, sources, config, vary, keep, name=stmt.name, statement=text,
                                   imports=self.options.imports)
            if self.options.dry_run:
                rows = plan.describe()
                columns = [c for c in rows[0] if c not in ("ref",)] if rows else []
                return QueryResult([None] * len(rows), columns, self.store.version_of_row, rows, "evaluate")
            rows = run_evaluation(self.store, plan, executor=self.options.executor, workers=self.options.workers)
        except EvaluationError as exc:  # points at the vary item or keep rule it is about
            items = {"vary": stmt.vary, "keep": stmt.keep}.get(getattr(exc, "part", None) or "", ())
            index = getattr(exc, "index", None)
            pos = items[index].pos if isinstance(index, int) and 0 <= index < len(items) else stmt.pos
            raise caret_error(text, pos, str(exc)) from None
        columns = [c for c in rows[0] if c != "ref"] if rows else []
        ids = [resolve(self.store, r["ref"]) if r.get("ref") else None for r in rows]
        return QueryResult(self._rows(ids), columns, self.store.version_of_row, rows, "evaluate")

    @staticmethod
    def _vary(item: Any, i: int, text: str) -> Any:
        if item.path[0] != "config" or len(item.path) < 2:
            raise caret_error(text, item.pos, "vary takes config paths: config.optimizer.lr, "
                              "config.data.batch_size, config.net[\"conv*\"].lr ...")
        from modelhub_torch.trials import Vary

        return Vary(tuple(item.path), item.values, i)

    @staticmethod
    def _keep(rule: KeepRule, var: str, text: str) -> Any:
        from modelhub_torch.trials import Threshold, TopRule

        def metric(ns: Any) -> str:
            if not isinstance(ns, NodeSet) or ns.var != var or ns.steps:
                raise caret_error(text, getattr(ns, "pos", rule.pos), f"a metric is written {var}[\"val_loss\"]")
            return ns.pattern

        if rule.call is None:
            if isinstance(rule.value, bool) or not isinstance(rule.value, (int, float)):
                raise caret_error(text, rule.pos, "a keep threshold compares a metric with a number")
            return Threshold(metric(rule.metric), str(rule.op), float(rule.value))
        if rule.call.lower() != "top":
            raise caret_error(text, rule.pos, f"unknown keep rule {rule.call!r}: use top(k, {var}[\"metric\"], steps) "
                              f"or a threshold such as {var}[\"val_acc\"] > 0.9")
        args = rule.args
        if len(args) not in (3, 4):
            raise caret_error(text, rule.pos, f"top takes (k, {var}[\"metric\"], steps[, \"min\"|\"max\"])")
        k, m, n = args[0], args[1], args[2]
        mode = args[3] if len(args) == 4 else None
        for what, value in (("k", k), ("steps", n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise caret_error(text, rule.pos, f"top's {what} must be a whole number, 1 or more; not {value!r}")
        if mode is not None and mode not in ("min", "max"):
            raise caret_error(text, rule.pos, f"top's last argument is \"min\" or \"max\", not {mode!r}")
        return TopRule(int(k), metric(m), int(n), mode)


def _output_var(stmt: Any) -> str:
    if isinstance(stmt, Select):
        return stmt.var
    if isinstance(stmt, Derive):
        return stmt.new
    return str(stmt.var)


def run_statement(store: RepoStore, text: str, tags: Callable[[], Iterable[tuple[str, str]]],
                  options: Options | None = None) -> QueryResult:
    """Run one DQL statement of any kind (docs/DQL.md)."""
    return Runner(store, tags, options or Options()).run(text)


__all__ = ["Options", "run_statement"]
