"""The row guards of a downgrade, in every schema of the database.

A table is `(schema, name)`: on PostgreSQL every schema that is not a system one
(pg_catalog, information_schema, pg_toast*, pg_temp*), named as the catalog spells it, mixed
case and all; on SQLite `(None, name)` for the main database. Rows are counted through
SQLAlchemy's `sa.table(name, schema=...)`, so every name reaches SQL quoted.

What a downgrade may drop: before it runs, the tables that its op.drop_table calls name and
that hold rows make the up-front question (a convenience: it sees only what the source shows).
The guarantee is the row comparison after each revision, in its own transaction: a table that
held rows and is now gone, or holds fewer rows (dropped and created again, emptied), is a loss
that needs a yes, else the revision is rolled back. A table renamed with all its rows is no
loss.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import sqlalchemy as sa

from .autogenerate import count_rows, insist_on_yes
from .snapshots import BOOKKEEPING

Table = tuple[str | None, str]


def is_system_schema(schema: str) -> bool:
    """PostgreSQL's own schemas, and each session's temporary ones."""
    return schema in ("pg_catalog", "information_schema") or schema.startswith(
        ("pg_toast", "pg_temp"))


def app_schemas(connection) -> list[str | None]:
    """The schemas that hold the app's tables: every non-system one on PostgreSQL; SQLite's
    main database, and on MySQL the URL's database (None: a MySQL schema is a database)."""
    if connection.dialect.name in ("sqlite", "mysql"):
        return [None]
    return [schema for schema in sa.inspect(connection).get_schema_names()
            if not is_system_schema(schema)]


def is_bookkeeping(table: str) -> bool:
    """Our tables, Alembic's, and SQLite's own (sqlite_sequence, sqlite_stat1, ...)."""
    return table in BOOKKEEPING or table.startswith("sqlite_")


def app_tables(connection) -> list[Table]:
    """Every table of the app, in every schema."""
    inspector = sa.inspect(connection)
    return [(schema, name) for schema in app_schemas(connection)
            for name in inspector.get_table_names(schema=schema) if not is_bookkeeping(name)]


def label(connection, table: Table) -> str:
    """`name` in the connection's default schema, else `schema.name`."""
    schema, name = table
    if schema is None or schema == connection.dialect.default_schema_name:
        return name
    return f"{schema}.{name}"


def row_counts(connection, tables: Iterable[Table] | None = None) -> dict[Table, int]:
    """{table: rows} for these tables (default: every table of the app); 0 for a table that
    does not exist."""
    tables = app_tables(connection) if tables is None else tables
    return {(schema, name): count_rows(connection, name, schema=schema)
            for schema, name in tables}


def rows_by_label(connection) -> dict[str, int]:
    """{label: rows} for every table of the app, for the rehearsal's report."""
    return {label(connection, table): rows for table, rows in row_counts(connection).items()}


def tables_holding_rows(connection) -> dict[Table, int]:
    """{table: rows} for every table of the app that holds rows."""
    return {table: rows for table, rows in row_counts(connection).items() if rows}


def tables_dropped_by(steps, function: str = "downgrade") -> Iterator[Table]:
    """Tables named by op.drop_table('name', schema='s') calls in the downgrade() of these
    revisions (names given as constants), with the schema they name (None: the default);
    `function`: a multidb history's downgrade_<bind>() instead."""
    for step in steps:
        for node in ast.walk(ast.parse(Path(step.revision.path).read_text())):
            if not (isinstance(node, ast.FunctionDef) and node.name == function):
                continue
            for call in ast.walk(node):
                if not (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "drop_table"
                        and call.args and isinstance(call.args[0], ast.Constant)):
                    continue
                schemas = [k.value.value for k in call.keywords
                           if k.arg == "schema" and isinstance(k.value, ast.Constant)]
                yield (schemas[0] if schemas else None), call.args[0].value


def rows_to_be_dropped(connection, steps, function: str = "downgrade") -> dict[str, int]:
    """{label: rows} for the tables holding rows that these downgrades' op.drop_table calls
    drop."""
    default = connection.dialect.default_schema_name
    tables = dict.fromkeys(
        (schema if schema is not None or connection.dialect.name == "sqlite" else default, name)
        for schema, name in tables_dropped_by(steps, function) if not is_bookkeeping(name))
    counts = row_counts(connection, tables)
    return {label(connection, table): rows for table, rows in counts.items() if rows}


def confirm_downgrade(holding_rows: dict[str, int], destination: str, yes: bool) -> bool:
    """A downgrade to base, or one that drops tables holding rows, needs a yes. True if the
    user said yes to losing rows (-x yes, or on the terminal)."""
    if yes:
        return True
    if destination != "base" and not holding_rows:
        return False
    what = "downgrade to base" if destination == "base" else "this downgrade"
    if holding_rows:
        what += " drops " + ", ".join(f"{t} ({n} rows)" for t, n in holding_rows.items())
    insist_on_yes(what, "Continue?", "downgrade", "nothing changed")
    return True


def rows_lost(before: dict[Table, int], now: dict[Table, int]) -> dict[Table, tuple[int, int]]:
    """{table: (rows before, rows now)} for the tables that held rows and now are gone or
    hold fewer; a table gone whose rows all turn up in a new table (renamed) is no loss."""
    lost = {table: (rows, now.get(table, 0)) for table, rows in before.items()
            if rows and now.get(table, 0) < rows}
    new = {table: rows for table, rows in now.items() if table not in before}
    for table, (rows, _) in list(lost.items()):
        if table in now:
            continue
        renamed = [t for t, n in new.items() if n == rows]
        if renamed:
            del lost[table]
            del new[renamed[0]]
    return lost


def check_rows_kept(connection, before: dict[Table, int], revision: str) -> dict[Table, int]:
    """After a downgrade revision, in its transaction: insist on a yes for each table that
    lost rows (else MigrationError, and the revision is rolled back). Returns every table's
    rows now, for the next revision."""
    now = row_counts(connection)
    lost = rows_lost(before, now)
    if lost:
        what = (f"the downgrade of {revision} "
                + ", ".join(f"dropped {label(connection, t)} ({rows} rows)" if t not in now
                            else f"took rows from {label(connection, t)} ({rows} -> {left} rows)"
                            for t, (rows, left) in lost.items()))
        outcome = ("that revision was rolled back" if connection.dialect.name != "mysql" else
                   "that revision stopped, its version not recorded, but on MySQL/MariaDB "
                   "its DDL statements had committed and the loss stays (`db stamp` records "
                   "where the database is)")
        insist_on_yes(what, "Keep it?", "downgrade", outcome)
    return now


def rows_not_in(conn, copied: sa.TableClause, current: sa.TableClause,
                columns: list[str]) -> int:
    """How many rows of `copied` (a copy kept before a run) `current` no longer holds, on the
    `columns` both still have; with none in common, every row of the copy."""
    if columns:
        common = [sa.column(c) for c in columns]
        gone = sa.except_(sa.select(*common).select_from(copied),
                          sa.select(*common).select_from(current))
        query = sa.select(sa.func.count()).select_from(gone.subquery())
    else:
        query = sa.select(sa.func.count()).select_from(copied)
    return conn.execute(query).scalar()
