"""`backfill()`: fill columns of a large table in batches, for a revision's
`autocommit_block()`, so no long transaction holds the table's rows.

    with op.get_context().autocommit_block():
        backfill("employee", set={"token": sa.text("md5(random()::text)")}, batch=10_000)

Each batch is one UPDATE of at most `batch` rows, in primary-key order, of the rows where a
column to set is still NULL. Outside a transaction (the autocommit block) each UPDATE commits
on its own, so an interrupted backfill keeps the batches done, and running it again carries
on with the rows still NULL. Inside a transaction (a rehearsal, a revision without the block)
the batches are that transaction's. Names reach SQL only through SQLAlchemy's quoting; the
values are SQLAlchemy expressions or bound parameters.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .errors import MigrationError


def backfill(table: str, set: dict, batch: int = 10_000, schema: str | None = None,
             connection=None) -> int:
    """Set the columns named by `set` ({column: value or SQL expression}) in the rows of
    `table` where one of them is NULL, `batch` rows per UPDATE in primary-key order; return
    how many rows were set. `connection`: the running revision's (op.get_bind()) unless given."""
    if batch < 1:
        raise MigrationError(f"backfill of {table}: batch must be 1 or more, not {batch}")
    if not set:
        raise MigrationError(f"backfill of {table}: nothing to set")
    if connection is None:
        from alembic import op

        if op.get_context().as_sql:
            raise MigrationError(f"backfill of {table} goes in batches as the database answers, "
                                 "which a --sql script cannot: run this upgrade without --sql")
        connection = op.get_bind()
    keys = sa.inspect(connection).get_pk_constraint(table, schema=schema)["constrained_columns"]
    if not keys:
        raise MigrationError(f"backfill of {table}: it has no primary key to go through the "
                             "rows in batches by")
    target = sa.table(table, *(sa.column(c) for c in [*keys, *set]), schema=schema)
    key = sa.tuple_(*(target.c[k] for k in keys))
    still_null = sa.or_(*(target.c[c].is_(None) for c in set))
    done, last, batches = 0, None, 0
    while True:
        chosen = sa.select(*(target.c[k] for k in keys)).where(still_null)
        if last is not None:
            chosen = chosen.where(key > sa.tuple_(*last))
        chosen = chosen.order_by(*(target.c[k] for k in keys)).limit(batch)
        update = (sa.update(target).where(key.in_(chosen))
                  .values({target.c[c]: value for c, value in set.items()})
                  .returning(*(target.c[k] for k in keys)))
        rows = connection.execute(update).all()
        if not rows:
            break
        batches += 1
        done += len(rows)
        last = max(tuple(row) for row in rows)
    logging.getLogger("alembic.runtime.migration").info(
        "  backfill of %s: %d rows in %d batches", table, done, batches)
    return done
