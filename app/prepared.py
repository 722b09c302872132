"""Prepared: a Core statement rendered once for a dialect, then run on the DB-API cursor.

Why: SQLAlchemy's per-execution work (execution context, parameter and result processing)
costs 0.1-0.2 ms of CPU per statement on the 2-core machines this is measured on, several
times what SQLite itself needs. On the hot paths (a webhook's queue insert, a sweep job's
claim and end) much of that time is spent holding the database's write lock, which every
other writer waits for. The statement is still written with Core and rendered by SQLAlchemy
for SQLite or PostgreSQL; its bind and result processors (SQLite stores datetimes as text)
are SQLAlchemy's own, so the values written and read are exactly those of a Core execute.

It runs inside the caller's Connection and transaction. Not for expanding IN parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from sqlalchemy.engine import Connection, Dialect


class Prepared:
    def __init__(self, statement, dialect: Dialect):
        compiled = statement.compile(dialect=dialect)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("Prepared statements cannot take expanding (IN) parameters")
        self.sql = compiled.string
        self._compiled = compiled
        self._order = compiled.positiontup  # positional paramstyle (SQLite's qmark), else None
        self._bind = {name: proc for name, bind in compiled.binds.items()
                      if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect))}
        columns = getattr(statement, "selected_columns", None) or getattr(statement, "exported_columns", ())
        self.columns = [c.key for c in columns]
        results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        self._results = results if any(results) else None
        self._literals: dict | None = None  # the statement's own constants, by bind name
        self._keys: frozenset = frozenset()  # the parameters every call passes

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Run it; the rows it returns (SELECT or RETURNING), processed as Core would."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, self._values(params or {}))
            rows = cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()
        if self._results is None:
            return rows
        return [tuple(p(v) if p else v for p, v in zip(self._results, row)) for row in rows]

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[dict]:
        """The rows as dicts by column key."""
        return [dict(zip(self.columns, row)) for row in self.rows(conn, params)]

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> dict | None:
        return next(iter(self.all(conn, params)), None)

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> int:
        """Run it; the number of rows it changed."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, self._values(params or {}))
            return cursor.rowcount
        finally:
            cursor.close()

    def run_many(self, conn: Connection, many: Iterable[Mapping[str, Any]]) -> None:
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(self.sql, [self._values(p) for p in many])
        finally:
            cursor.close()

    def _values(self, params: Mapping[str, Any]):
        if self._literals is None:
            self._keys = frozenset(params)  # first: another thread may read it once _literals is set
            self._literals = self._compiled.construct_params({k: None for k in params})
        elif params.keys() != self._keys:  # a missing key would be written as NULL, silently
            raise ValueError(f"parameters {sorted(params)} differ from this statement's {sorted(self._keys)}")
        values = {**self._literals, **params}
        for name, process in self._bind.items():
            if name in values:
                values[name] = process(values[name])
        return values if self._order is None else tuple(values[name] for name in self._order)


def prepared_once(cache: dict, conn: Connection, name: str, build: Callable[[], Any]) -> Prepared:
    """``cache``'s Prepared for ``name`` on this connection's dialect, built on first use:
    composing and rendering a statement costs more than running it."""
    key = (conn.dialect.name, name)
    stmt = cache.get(key)
    if stmt is None:
        stmt = cache[key] = Prepared(build(), conn.dialect)
    return stmt
