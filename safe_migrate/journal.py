"""The journal of a half-applied revision, on MySQL/MariaDB, where each DDL statement commits
on its own: `safe_migrate_journal` holds one row per statement of a revision that committed
(its index in the revision, the sha256 of its SQL and values, its text, when). A failed
revision leaves its rows; the next `db upgrade` skips those statements (mysql.Journaled)
and deletes the rows in the transaction that records the revision's version.
"""
from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from .errors import MigrationError
from .transactions import writing

JOURNAL_TABLE = "safe_migrate_journal"

journal = sa.Table(
    JOURNAL_TABLE,
    sa.MetaData(),
    sa.Column("revision", sa.String(32), primary_key=True),
    sa.Column("statement", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("text", sa.String(200), nullable=False),
    sa.Column("committed_at", sa.DateTime, nullable=False),
)


def label(revisions) -> str:
    return "+".join(revisions) if revisions else "base"


def ensure_journal_table(connection: sa.engine.Connection) -> None:
    """Create the table unless it is there (a DDL statement: before any revision runs)."""
    if not sa.inspect(connection).has_table(JOURNAL_TABLE):
        with writing(connection):
            journal.create(connection, checkfirst=True)


def half_applied(connection: sa.engine.Connection) -> dict[str, list[str]]:
    """{revision: [statement text, ...]} for every revision with committed statements."""
    rows = connection.execute(sa.select(journal.c.revision, journal.c.text)
                              .order_by(journal.c.revision, journal.c.statement)).all()
    found: dict[str, list[str]] = {}
    for revision, text in rows:
        found.setdefault(revision, []).append(text)
    return found


def committed(connection: sa.engine.Connection, revision: str) -> list[tuple[str, str]]:
    """[(sha256, text)] of the revision's committed statements, by index."""
    return [(row.sha256, row.text) for row in connection.execute(
        sa.select(journal.c.sha256, journal.c.text).where(journal.c.revision == revision)
        .order_by(journal.c.statement))]


def record(connection: sa.engine.Connection, revision: str,
           statements: list[tuple[int, str, str]]) -> None:
    """Journal statements that committed, and commit that at once, on the driver's
    connection (the revision's transaction, as SQLAlchemy and Alembic see it, goes on)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    connection.execute(journal.insert(), [
        {"revision": revision, "statement": index, "sha256": digest, "text": text[:200],
         "committed_at": now} for index, digest, text in statements])
    connection.connection.dbapi_connection.commit()


def forget(connection: sa.engine.Connection, revision: str) -> None:
    """In the transaction that records the revision's version: its journal is done."""
    connection.execute(journal.delete().where(journal.c.revision == revision))


def refuse_other_steps(connection: sa.engine.Connection, steps) -> None:
    """With a half-applied revision, only its own upgrade may run next."""
    if not sa.inspect(connection).has_table(JOURNAL_TABLE):
        return
    pending = half_applied(connection)
    if not pending:
        return
    first = steps[0] if steps else None
    for revision, texts in pending.items():
        if first is not None and first.is_upgrade and first.revision.revision == revision:
            continue
        done = "; ".join(f"{n}) {t}" for n, t in enumerate(texts, 1))
        raise MigrationError(
            f"revision {revision} is half-applied: {len(texts)} of its statements committed "
            f"({done}) and its version is not recorded; nothing was run: finish it with "
            f"`db upgrade {revision}` (after fixing it), or undo those statements by hand and "
            f"delete its rows from {JOURNAL_TABLE}")
