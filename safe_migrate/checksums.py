"""Revision checksums: the sha256 of each applied revision's file, kept beside
alembic_version in `migration_checksums`, so an edited applied revision is noticed; with
when it was applied and how long it took (`db history --applied`)."""
from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError

CHECKSUM_TABLE = "migration_checksums"

checksums = sa.Table(
    CHECKSUM_TABLE,
    sa.MetaData(),
    sa.Column("revision", sa.String(32), primary_key=True),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seconds", sa.Float, nullable=True),  # added later: NULL in older rows
)


def file_checksum(path: str | Path) -> str:
    """The sha256 of a file's bytes. (os.read, not open(): every cached command and a no-op
    upgrade hash each revision file, and open()'s buffered file costs twice the syscalls.)"""
    digest, fd = hashlib.sha256(), os.open(path, os.O_RDONLY)
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            digest.update(chunk)
            if len(chunk) < 1 << 16:  # a short read of a regular file: its end
                return digest.hexdigest()
    finally:
        os.close(fd)


def has_seconds(connection: sa.engine.Connection) -> bool:
    return "seconds" in {c["name"] for c in sa.inspect(connection).get_columns(CHECKSUM_TABLE)}


def ensure_checksum_table(connection: sa.engine.Connection) -> None:
    """Create the table, or add the column an earlier version's table lacks."""
    if not sa.inspect(connection).has_table(CHECKSUM_TABLE):
        checksums.create(connection)
    elif not has_seconds(connection):
        connection.exec_driver_sql(f"ALTER TABLE {CHECKSUM_TABLE} ADD COLUMN seconds FLOAT")


def forget_checksums(connection: sa.engine.Connection, revisions=None) -> None:
    """Delete the stored checksums of these revisions (of all, without any)."""
    forget = checksums.delete()
    if revisions is not None:
        forget = forget.where(checksums.c.revision.in_(revisions))
    connection.execute(forget)


def remember_checksums(connection: sa.engine.Connection, scripts,
                       seconds: float | None = None) -> None:
    """Store the sha256 of each revision script's file, as applied now (taking `seconds`)."""
    now = datetime.now(UTC)
    for script in scripts:
        connection.execute(checksums.insert().values(
            revision=script.revision, checksum=file_checksum(script.path), applied_at=now,
            seconds=seconds))


def record_checksum(ctx, step, seconds: float | None) -> None:
    """In a revision's own transaction (Alembic's on_version_apply hook), remember the
    sha256 of an applied revision's file and how long it took, or forget a reverted one.
    (The table must exist: ensure_checksum_table.)"""
    forget_checksums(ctx.connection, step.up_revision_ids)
    if step.is_upgrade:
        remember_checksums(ctx.connection,
                           [step.revision_map.get_revision(r) for r in step.up_revision_ids],
                           seconds)


def verify_checksums(script, connection: sa.engine.Connection) -> None:
    """Refuse to run when an applied revision's file changed since it was applied."""
    from alembic.script.revision import RevisionError

    for revision, checksum in recorded_checksums(connection).items():
        try:
            path = script.get_revision(revision).path
        except RevisionError:
            raise MigrationError(f"revision {revision} is applied but its file is gone") from None
        if file_checksum(path) != checksum:
            raise MigrationError(
                f"{path} changed after revision {revision} was applied (its sha256 differs); "
                "put the file back, or run `db repair` if the change was deliberate")


def recorded_checksums(connection: sa.engine.Connection) -> dict:
    """{revision: sha256} as recorded when each was applied."""
    if not sa.inspect(connection).has_table(CHECKSUM_TABLE):
        return {}
    return dict(connection.execute(sa.select(checksums.c.revision, checksums.c.checksum)).all())


def applied_dates(connection: sa.engine.Connection) -> dict:
    """{revision: (when it was applied, how many seconds it took or None)} for this database."""
    if not sa.inspect(connection).has_table(CHECKSUM_TABLE):
        return {}
    seconds = checksums.c.seconds if has_seconds(connection) else sa.null()
    rows = connection.execute(sa.select(checksums.c.revision, checksums.c.applied_at, seconds))
    return {revision: (when, took) for revision, when, took in rows}
