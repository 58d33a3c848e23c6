"""SQLite table copies that keep what they copy.

On SQLite, Alembic's batch mode rebuilds a table (create a new one, copy the rows, drop the
old one, rename it), as SQLite's ALTER TABLE documentation describes. What it rebuilds it
learns by reflection, which misses triggers, expression and partial indexes, AUTOINCREMENT,
WITHOUT ROWID, collations, CHECK constraints and the ON DELETE / ON UPDATE / DEFERRABLE
clauses of a foreign key. `record_original` records each table as a copy starts; after the revision, inside
its transaction, `restore_lost_objects` puts back what a copy lost and can be put back
(triggers, indexes, the sqlite_sequence value), and returns the rest, so the revision is
rolled back with one line naming each loss unless the user accepts it.
"""
from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass

import sqlalchemy as sa

COLLATE = re.compile(r"\bCOLLATE\s+(\w+)", re.IGNORECASE)
CHECK = re.compile(r"\bCHECK\s*\(", re.IGNORECASE)
FOREIGN_KEYS_CHANGED = re.compile(r"create_foreign_key|type_=['\"]foreignkey")
DEFERRABLE = re.compile(
    r"\b(?:NOT\s+)?DEFERRABLE(?:\s+INITIALLY\s+(?:DEFERRED|IMMEDIATE))?", re.IGNORECASE)


# How Alembic's batch mode starts a copy: the new table under a temporary name.
COPY_STARTS = re.compile(r'\s*CREATE TABLE "?_alembic_tmp_(\w+)', re.IGNORECASE)


@dataclass
class Original:
    """A table as it was just before a copy replaced it."""
    sql: str
    objects: dict[str, tuple[str, str]]  # its indexes and triggers: name -> (type, sql)
    sequence: int | None                 # its sqlite_sequence value


def record_original(conn, cursor, statement, parameters, context, executemany) -> None:
    """Engine listener (before_cursor_execute): as a migration's batch copy starts, record
    the table it replaces, in the connection's info, for restore_lost_objects. (Reading
    every table before every revision instead would cost a 1,000-revision history seconds.)"""
    started = COPY_STARTS.match(statement)
    if started and conn.get_execution_options().get("migration"):
        found = originals(conn)
        if started.group(1) not in found:
            found[started.group(1)] = read_table(cursor.connection, started.group(1))


def originals(connection) -> dict[str, Original]:
    """{table: Original} for the copies made on this connection since the last clear()."""
    return connection.info.setdefault("safe_migrate.originals", {})


def read_table(dbapi_connection, name: str) -> Original:
    rows = dbapi_connection.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ?", (name,)).fetchall()
    sequence = None
    if dbapi_connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        found = dbapi_connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (name,)).fetchone()
        sequence = found[0] if found else None
    table_sql = next(sql for kind, _, sql in rows if kind == "table")
    objects = {n: (kind, sql) for kind, n, sql in rows if kind in ("index", "trigger") and sql}
    return Original(table_sql, objects, sequence)


def foreign_key_actions(sql: str) -> dict[str, tuple[str, str]]:
    """{column: (ON UPDATE, ON DELETE)} of a CREATE TABLE statement, as SQLite reads it (in
    a scratch database: the old table is gone by the time this is asked)."""
    with closing(sqlite3.connect(":memory:")) as scratch:
        scratch.execute(sql)
        name = scratch.execute("SELECT name FROM sqlite_master").fetchone()[0]
        return {fk[3]: (fk[5], fk[6])
                for fk in scratch.execute(f'PRAGMA foreign_key_list("{name}")')}


def split_definition(sql: str) -> dict[str, str]:
    """{column: its definition} from a CREATE TABLE statement."""
    body = sql[sql.index("(") + 1:sql.rindex(")")]
    parts, depth, start, quote = [], 0, 0, None
    for i, char in enumerate(body):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"`[":
            quote = "]" if char == "[" else char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    columns = {}
    for part in parts:
        first = part.split(None, 1)[0].upper() if part else ""
        if first not in ("CONSTRAINT", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK", ""):
            columns[part.split(None, 1)[0].strip('"`[]')] = part
    return columns


def all_checks(sql: str) -> set[str]:
    """Every `CHECK (...)` in a CREATE TABLE statement, normalized."""
    checks = set()
    for match in CHECK.finditer(sql):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        checks.add(normalized(sql[match.start():end + 1]))
    return checks


def normalized(sql: str) -> str:
    return " ".join(sql.replace('"', "").split()).upper()


def restore_lost_objects(connection, originals: dict[str, Original],
                         revision_text: str) -> list[tuple[str, str]]:
    """After a revision: put back the indexes and triggers its table copies dropped (those
    it does not name), fix sqlite_sequence, and return (table, what) it could not keep."""
    losses = []
    for name, old in originals.items():
        now = connection.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ?", (name,)).all()
        new_sql = next((sql for kind, _, sql in now if kind == "table"), None)
        if new_sql is None:
            continue  # dropped on purpose
        present = {n for _, n, _ in now}
        for object_name, (kind, sql) in old.objects.items():
            if object_name in present or object_name in revision_text:
                continue
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(sql)
            except sa.exc.DBAPIError:
                losses.append((name, f"{kind} {object_name}"))
        losses += [(name, what) for what in lost_properties(name, old.sql, new_sql, revision_text)]
        if old.sequence is not None and "AUTOINCREMENT" in new_sql.upper():
            connection.exec_driver_sql(
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                (old.sequence, name))
    return losses


def lost_properties(name: str, old_sql: str, new_sql: str, revision_text: str) -> list[str]:
    """What the new table lacks of the old one's properties, for the columns it kept."""
    # A revision that creates or drops foreign keys changes their clauses on purpose.
    keys_changed = FOREIGN_KEYS_CHANGED.search(revision_text) is not None
    losses = []
    for keyword in ("AUTOINCREMENT", "WITHOUT ROWID"):
        if keyword in normalized(old_sql) and keyword not in normalized(new_sql):
            losses.append(f"{keyword} of {name}")
    old_columns, new_columns = split_definition(old_sql), split_definition(new_sql)
    old_fks, new_fks = foreign_key_actions(old_sql), foreign_key_actions(new_sql)
    for column, definition in old_columns.items():
        if column not in new_columns:
            continue  # the revision dropped or renamed it
        collation = COLLATE.search(definition)
        if collation and not COLLATE.search(new_columns[column]):
            losses.append(f"COLLATE {collation.group(1)} of {name}.{column}")
        if keys_changed:
            continue
        if column in old_fks and old_fks[column] != new_fks.get(column):
            on_update, on_delete = old_fks[column]
            losses.append(f"ON UPDATE {on_update} ON DELETE {on_delete} of {name}.{column}")
        deferrable = DEFERRABLE.search(definition)
        if deferrable and not DEFERRABLE.search(new_columns[column]):
            losses.append(f"{normalized(deferrable.group())} of {name}.{column}")
    gone = set(old_columns) - set(new_columns)
    for check in sorted(all_checks(old_sql) - all_checks(new_sql)):
        if not any(re.search(rf"\b{re.escape(c.upper())}\b", check) for c in gone):
            losses.append(f"{check} of {name}")
    return losses
