"""How the package's transactions on a migration connection begin and end, the same on
SQLAlchemy 1.4 and 2.0.

SQLAlchemy 2.0 begins a transaction at a connection's first statement (autobegin); 1.4's
connection runs a statement outside any transaction on its own (the drivers are in their
autocommit mode here: sqlite.py). A read left open in an autobegun transaction would make
Alembic take the run's transactions for its caller's and commit none of them, hold SQLite's
locks while a question waits for its answer, and refuse the package's next `begin()`. So
after its reads the package commits what they began (1.4 committed each statement by itself:
the effect is the same), and it begins its own writes with `writing()`.

A SQLite migration connection takes the write lock (BEGIN IMMEDIATE) only for a transaction
begun while `WRITING` is set on it (sqlite.RunListeners): a run's revisions and the package's
own writes, never a read.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

# connection.info key (the driver connection's own dict, on both versions): set while the
# transactions this connection begins are a run's writes.
WRITING = "safe_migrate.writing"


def commit_reads(connection: sa.engine.Connection) -> None:
    """Commit the transaction the reads so far began, if any (SQLAlchemy 2's autobegin)."""
    transaction = connection.get_transaction()
    if transaction is not None and transaction.is_active:
        transaction.commit()


@contextmanager
def reads_left_closed(connection: sa.engine.Connection) -> Iterator[None]:
    """Reads that leave the connection as they found it: out of any transaction."""
    was_in_one = connection.in_transaction()
    yield
    if not was_in_one:
        commit_reads(connection)


def write_transactions(connection: sa.engine.Connection, on: bool = True) -> None:
    """From now on, the transactions this connection begins are a run's writes (or not)."""
    connection.info[WRITING] = on


@contextmanager
def writing(connection: sa.engine.Connection) -> Iterator[None]:
    """One write transaction of the package's own, committed at the end of the block, after
    committing whatever reads were open."""
    commit_reads(connection)
    before = connection.info.get(WRITING, False)
    write_transactions(connection)
    try:
        with connection.begin():
            yield
    finally:
        write_transactions(connection, before)
