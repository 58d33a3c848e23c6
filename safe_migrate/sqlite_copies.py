"""SQLite table copies that keep what they copy.

On SQLite, Alembic's batch mode rebuilds a table (create a new one, copy the rows, drop the
old one, rename it), as SQLite's ALTER TABLE documentation describes. What it rebuilds it
learns by reflection, which misses triggers, expression and partial indexes, AUTOINCREMENT,
WITHOUT ROWID, collations, CHECK constraints and the ON DELETE / ON UPDATE actions of a
foreign key. The runner records the schema before each revision; after it, inside the
revision's transaction, `restore_lost_objects` puts back what a copy lost and can be put
back (triggers, indexes, the sqlite_sequence value), and returns the rest, so the revision
is rolled back with one line naming each loss unless the user accepts it.
"""
from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

import sqlalchemy as sa

COLLATE = re.compile(r"\bCOLLATE\s+(\w+)", re.IGNORECASE)
CHECK = re.compile(r"\bCHECK\s*\(", re.IGNORECASE)


@dataclass
class Schema:
    """sqlite_master and sqlite_sequence, as they stand: cheap to read before every revision."""
    tables: dict[str, tuple[str, int]] = field(default_factory=dict)     # name -> (sql, rootpage)
    objects: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # -> (type, table, sql)
    sequences: dict[str, int] = field(default_factory=dict)


def read_schema(connection) -> Schema:
    """Every table of the database, and its explicitly created indexes and triggers."""
    schema = Schema()
    for kind, name, table, sql, rootpage in connection.exec_driver_sql(
            "SELECT type, name, tbl_name, sql, rootpage FROM sqlite_master"):
        if kind == "table" and not name.startswith("sqlite_"):
            schema.tables[name] = (sql, rootpage)
        elif kind in ("index", "trigger") and sql:
            schema.objects[name] = (kind, table, sql)
        elif name == "sqlite_sequence":
            schema.sequences = dict(connection.exec_driver_sql(
                "SELECT name, seq FROM sqlite_sequence").all())
    return schema


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


def restore_lost_objects(connection, before: Schema,
                         revision_text: str) -> list[tuple[str, str]]:
    """After a revision: put back the indexes and triggers its table copies dropped (those
    it does not name), fix sqlite_sequence, and return (table, what) it could not keep."""
    after = read_schema(connection)
    losses = []
    for name, (old_sql, old_rootpage) in before.tables.items():
        new_sql, new_rootpage = after.tables.get(name, (None, old_rootpage))
        if new_rootpage == old_rootpage:
            continue  # dropped on purpose, or not copied
        for object_name, (kind, table, sql) in before.objects.items():
            if table != name or object_name in after.objects or object_name in revision_text:
                continue
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(sql)
            except sa.exc.DBAPIError:
                losses.append((name, f"{kind} {object_name}"))
        losses += [(name, what) for what in lost_properties(name, old_sql, new_sql)]
        if name in before.sequences and "AUTOINCREMENT" in new_sql.upper():
            connection.exec_driver_sql(
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                (before.sequences[name], name))
    return losses


def lost_properties(name: str, old_sql: str, new_sql: str) -> list[str]:
    """What the new table lacks of the old one's properties, for the columns it kept."""
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
        if column in old_fks and old_fks[column] != new_fks.get(column):
            on_update, on_delete = old_fks[column]
            losses.append(f"ON UPDATE {on_update} ON DELETE {on_delete} of {name}.{column}")
    gone = set(old_columns) - set(new_columns)
    for check in sorted(all_checks(old_sql) - all_checks(new_sql)):
        if not any(re.search(rf"\b{re.escape(c.upper())}\b", check) for c in gone):
            losses.append(f"{check} of {name}")
    return losses
