"""Database engine, session factory and declarative base: one schema for SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, Engine, MetaData, String, Table, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from app.jsontext import compact_text

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class NotViaIndex(ColumnElement[Any]):
    """A string `column` the database must not look its rows up by: for a statement that names
    its rows by primary key and re-checks other columns.

    Without statistics (SQLite keeps none; a fresh or fast-grown PostgreSQL table has none
    yet), both planners judged an index on such a column (`status`) cheaper than a short list
    of ids, and read every row with that status (the whole backlog of due jobs) to find them.
    Written `+column` on SQLite (its documented way to keep a term off an index) and
    `(column || '')` on PostgreSQL: the same value, no longer an indexed expression."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]) -> None:
        if not isinstance(column.type, String):
            raise TypeError("NotViaIndex takes a string column")
        self.column = column
        self.type = column.type


@compiles(NotViaIndex)
def _compile_column(element: NotViaIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(NotViaIndex, "sqlite")
def _compile_sqlite_column(element: NotViaIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


@compiles(NotViaIndex, "postgresql")
def _compile_postgresql_column(element: NotViaIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.column, **kw)} || '')"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases (SQLite stores no zone: we add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another to finish


def _sqlite_setup(sync_engine: Engine) -> None:
    """WAL, full fsync on commit, foreign keys, a busy timeout, temporary data in memory, and
    BEGIN IMMEDIATE."""

    @event.listens_for(sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A multi-row statement inside a transaction keeps a statement journal (to undo just
        # that statement alone); past 64 KiB SQLite spills it to a file it creates in /var/tmp
        # and deletes again. The intake's batches did so on most commits: under the
        # benchmark's load, 8.9 disk writes a webhook instead of 6.3, and a file created and
        # unlinked per commit. In memory the journal is a copy of the pages in RAM.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # Take the write lock up front: two writers never deadlock upgrading read locks.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class JsonText(str):
    """A JSON document already written out (a webhook's body as received): a JSON column stores
    this text as it is, instead of encoding the value again."""


def json_serializer(value: Any) -> str:
    """The engines' JSON encoder: compact JSON (app/jsontext.py), except for `JsonText`, kept
    as written."""
    return value if isinstance(value, JsonText) else compact_text(value)


def create_engine(url: str, connect_timeout: float | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine; SQLite gets WAL, full fsync on commit and a busy timeout; PostgreSQL
    connections are checked before use (a restarted server's stale ones are replaced) and new
    ones give up after `connect_timeout` seconds."""
    kwargs.setdefault("json_serializer", json_serializer)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_setup(engine.sync_engine)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    if connect_timeout is not None:
        kwargs.setdefault("connect_args", {})["timeout"] = connect_timeout
    return create_async_engine(url, **kwargs)


def create_sqlite_writer_engine(url: str) -> Engine:
    """The same SQLite database through the stdlib driver, for one writer thread."""
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_sync_engine(
        sync_url,
        connect_args={"timeout": 30, "check_same_thread": False},
        poolclass=StaticPool,
        json_serializer=json_serializer,
    )
    _sqlite_setup(engine)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def insert_ignore(dialect_name: str, table: Any, *conflict_columns: str) -> Insert:
    """`INSERT … ON CONFLICT (cols) DO NOTHING` for either database."""
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(
            index_elements=list(conflict_columns)
        )
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns))


@functools.cache
def insert_ignore_returning(dialect_name: str, table: Table, conflict: tuple[str, ...]) -> Insert:
    """`insert_ignore(...).returning(table.c.id)` built once per table: executed with a dict of
    values, so the hot paths skip rebuilding the statement and its cache key every time."""
    return insert_ignore(dialect_name, table, *conflict).returning(table.c.id)


class BulkInsert:
    """`INSERT INTO table (…) VALUES (…), (…) [ON CONFLICT (…) DO NOTHING] [RETURNING …]`: many
    rows in one statement sent straight to the driver (`exec_driver_sql`), for the intake's hot
    path on both databases.

    The table, its columns, their Python-side defaults and their bind conversions all come from
    the SQLAlchemy model, as with `insert(table)`; what is skipped is SQLAlchemy's work per
    parameter (a dict per row, cache-key lookups), which cost more than the database's own
    work for a batch of webhooks. A value shared by many rows (a batch's `now`) is converted
    once. Every row gives the same keys; a column it leaves out gets the model's default.
    """

    # Both SQLite (3.32+) and asyncpg take up to 32,766 bound values in one statement.
    MAX_VALUES = 30_000

    def __init__(
        self,
        table: Table,
        columns: tuple[str, ...],
        *,
        ignore_conflict_on: tuple[str, ...] = (),
        returning: tuple[str, ...] = (),
    ) -> None:
        self.table = table
        self.columns = columns
        # Columns the caller does not give that have a Python-side default (scalar or callable).
        self.defaulted = tuple(
            column
            for column in table.columns
            if column.name not in columns and column.default is not None and not column.primary_key
        )
        self.names = (*columns, *(column.name for column in self.defaulted))
        self.ignore_conflict_on = ignore_conflict_on
        self.returning = returning
        self._sql: dict[tuple[str, int, int], str] = {}
        self._processors: dict[str, list[tuple[int, Any]]] = {}
        pick = operator.itemgetter(*columns)  # one value, or a tuple of them for several keys
        self._values_of: Callable[[dict[str, Any]], list[Any]] = (
            (lambda row: list(pick(row))) if len(columns) > 1 else (lambda row: [pick(row)])
        )

    def statement(self, dialect: Any, rows: int, first: int = 1) -> str:
        """The statement for `rows` rows; with asyncpg's numbered parameters, the first is
        `$first` (a statement embedded after another one's parameters)."""
        key = (dialect.name, rows, first)
        sql = self._sql.get(key)
        if sql is None:
            quote = dialect.identifier_preparer.quote
            width = len(self.names)
            if dialect.paramstyle == "qmark":
                groups = ["(" + ", ".join("?" * width) + ")"] * rows
            elif dialect.paramstyle in ("numeric_dollar", "numeric"):
                mark = "$" if dialect.paramstyle == "numeric_dollar" else ":"
                groups = [
                    "(" + ", ".join(f"{mark}{r * width + c + first}" for c in range(width)) + ")"
                    for r in range(rows)
                ]
            else:  # pragma: no cover - only SQLite's and asyncpg's drivers are supported
                raise NotImplementedError(f"paramstyle {dialect.paramstyle}")
            # Names from the model, quoted by the dialect; every value is a bound parameter.
            sql = (
                f"INSERT INTO {quote(self.table.name)} ({', '.join(map(quote, self.names))}) "  # noqa: S608
                f"VALUES {', '.join(groups)}"
            )
            if self.ignore_conflict_on:
                sql += f" ON CONFLICT ({', '.join(map(quote, self.ignore_conflict_on))}) DO NOTHING"
            if self.returning:
                sql += f" RETURNING {', '.join(map(quote, self.returning))}"
            self._sql[key] = sql
        return sql

    def _converters(self, dialect: Any) -> list[tuple[int, Any]]:
        """(position, bind processor) of each column whose values the driver needs converted."""
        processors = self._processors.get(dialect.name)
        if processors is None:
            processors = [
                (position, process)
                for position, name in enumerate(self.names)
                if (
                    process := self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                )
                is not None
            ]
            self._processors[dialect.name] = processors
        return processors

    def _defaults(self) -> list[Any]:
        values = []
        for column in self.defaulted:
            default: Any = column.default
            values.append(default.arg(None) if default.is_callable else default.arg)
        return values

    def values(self, dialect: Any, rows: list[dict[str, Any]]) -> list[Any]:
        """The driver values of `rows`, flat, in the statement's order."""
        processors = self._converters(dialect)
        converted: dict[int, Any] = {}  # id(value) -> driver value, for values rows share
        flat: list[Any] = []
        for row in rows:
            if len(row) != len(self.columns):  # a key this statement would drop
                raise ValueError(f"{self.table.name}: row keys {sorted(row)} != columns")
            values = self._values_of(row)
            if self.defaulted:
                values += self._defaults()
            for position, process in processors:
                value = values[position]
                if value is None:
                    continue
                if isinstance(value, datetime):
                    key = id(value)
                    if key not in converted:
                        converted[key] = (value, process(value))
                    values[position] = converted[key][1]
                else:
                    values[position] = process(value)
            flat += values
        return flat

    async def execute(self, conn: Any, rows: list[dict[str, Any]]) -> list[Any]:
        """Insert `rows` (dicts keyed by `columns`); the RETURNING rows of those inserted, each
        a tuple (or a row that unpacks like one) in `returning` order."""
        dialect = conn.dialect
        # The SQLite writer's connection (app/groupcommit.py) runs it on the driver directly.
        on_driver = getattr(conn, "execute_on_driver", None)
        returned: list[Any] = []
        step = max(1, self.MAX_VALUES // len(self.names))  # rows per statement
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            sql = self.statement(dialect, len(chunk))
            values = tuple(self.values(dialect, chunk))
            if on_driver is not None:
                returned.extend(on_driver(sql, values))
                continue
            result = await conn.exec_driver_sql(sql, values)
            if self.returning:
                returned.extend(result.all())
        return returned


async def insert_together(conn: Any, *parts: tuple[BulkInsert, list[dict[str, Any]]]) -> None:
    """Several `BulkInsert`s (none with RETURNING) in one round trip where the database allows:
    on PostgreSQL one statement, the first inserts as data-modifying WITH queries (each sees
    the rows the transaction inserted before it; none depends on another's rows). Elsewhere, or
    past the bound-value limit, one statement each, in order."""
    parts = tuple((insert, rows) for insert, rows in parts if rows)
    dialect = conn.dialect
    if (
        len(parts) < 2
        or dialect.name != "postgresql"
        or sum(len(rows) * len(insert.names) for insert, rows in parts) > BulkInsert.MAX_VALUES
    ):
        for insert, rows in parts:
            await insert.execute(conn, rows)
        return
    statements: list[str] = []
    values: list[Any] = []
    for insert, rows in parts:
        assert not insert.returning, "only the last statement's rows could be returned"
        statements.append(insert.statement(dialect, len(rows), first=len(values) + 1))
        values += insert.values(dialect, rows)
    *first, last = statements
    ctes = ", ".join(f"inserted_{n} AS ({sql})" for n, sql in enumerate(first))
    await conn.exec_driver_sql(f"WITH {ctes} {last}", tuple(values))


def table_of(model: type[Base]) -> Table:
    """The Core table behind a model, typed as a Table (for insert/update statements)."""
    return cast(Table, model.__table__)
