"""Database engine, session factory and declarative base: one schema for SQLite and PostgreSQL."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, Engine, MetaData, Table, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

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


def _sqlite_setup(sync_engine: Engine) -> None:
    """WAL, full fsync on commit, foreign keys, a busy timeout, and BEGIN IMMEDIATE."""

    @event.listens_for(sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # Take the write lock up front: two writers never deadlock upgrading read locks.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, connect_timeout: float | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine; SQLite gets WAL, full fsync on commit and a busy timeout; PostgreSQL
    connections are checked before use (a restarted server's stale ones are replaced) and new
    ones give up after `connect_timeout` seconds."""
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


@functools.cache
def insert_ignore_returning_keys(
    dialect_name: str, table: Table, conflict: str, key: str
) -> Insert:
    """`insert_ignore(...)` returning (id, `key`) for the rows inserted, built once per table:
    executed with many rows, the caller maps each new id back by its key."""
    return insert_ignore(dialect_name, table, conflict).returning(table.c.id, table.c[key])


def table_of(model: type[Base]) -> Table:
    """The Core table behind a model, typed as a Table (for insert/update statements)."""
    return cast(Table, model.__table__)
