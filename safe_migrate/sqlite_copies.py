"""SQLite table changes that cannot lose what they do not understand.

Alembic's batch mode changes a SQLite table by copying it (create a new table, copy the rows,
drop the old one, rename), and learns what to copy by reflection, which misses collations,
STRICT, ON CONFLICT clauses, expression and partial indexes, triggers, AUTOINCREMENT...

This module owns two things, installed on a migration's context by `install`:

* No copy where SQLite changes the table in place. A batch block whose operations are all
  ones SQLite's ALTER TABLE does (ADD COLUMN, DROP COLUMN from 3.35, RENAME COLUMN from 3.25,
  RENAME TO, and CREATE/DROP INDEX) runs them natively, inside a SAVEPOINT: SQLite's own
  rules decide, and on its refusal (an indexed column, a non-constant default...) the block
  falls back to Alembic's copy.
* Every copy is judged by SQLite's own introspection, before and after (PRAGMA table_list,
  table_xinfo, index_list/index_xinfo, foreign_key_list, sqlite_schema, sqlite_sequence, and
  a scratch in-memory database for what only SQLite's behaviour shows: each column's default
  collation, its type affinity, AUTOINCREMENT, and the NOT NULL / UNIQUE / CHECK constraints
  with their ON CONFLICT action, as SQLite compiles them for an INSERT). What the batch
  operations did not ask to change must be equal after: indexes and triggers Alembic dropped
  are recreated from their original SQL, views and other tables' triggers are dropped before
  the copy and recreated after (SQLite's 12-step ALTER procedure), and whatever still differs
  is a loss (`losses`), which the runner turns into a refusal unless `-x lose=TABLE`.

What the batch operations ask to change comes from Alembic's own objects: the table Alembic
reflected and the table it is about to create (ApplyBatchImpl), never the revision's text.
"""
from __future__ import annotations

import sqlite3
import sys
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.ddl.sqlite import SQLiteImpl
from sqlalchemy.dialects.sqlite.base import SQLiteDialect

from . import progress

# The batch operations SQLite's ALTER TABLE can do, and the SQLite version each needs.
NATIVE = {"add_column": (3, 2, 0), "drop_column": (3, 35, 0), "alter_column": (3, 25, 0),
          "rename_table": (3, 2, 0), "create_index": (3, 2, 0), "drop_index": (3, 2, 0)}
# alter_column's arguments that change something other than the column's name.
ALTERATIONS = {"nullable": None, "server_default": False, "type_": None, "comment": False,
               "autoincrement": None}
# SQLite's result codes for the constraints an INSERT checks (sqlite3.h).
CONSTRAINT_CODES = {275: "CHECK", 1299: "NOT NULL", 2067: "UNIQUE", 1555: "PRIMARY KEY"}
SCRATCH_DIALECT = SQLiteDialect()
ON_CONFLICT = {1: "ROLLBACK", 2: "ABORT", 3: "FAIL", 4: "IGNORE", 5: "REPLACE"}


@dataclass
class Column:
    """One column as SQLite sees it."""
    declared: str
    affinity: str        # as CREATE TABLE AS SELECT declares it: INT, TEXT, NUM, REAL or ''
    notnull: bool
    default: str | None
    pk: int
    hidden: int          # 2: generated VIRTUAL, 3: generated STORED
    collation: str | None


@dataclass
class Index:
    name: str
    unique: bool
    origin: str          # c: CREATE INDEX, u: UNIQUE constraint, pk: PRIMARY KEY
    partial: bool
    keys: tuple          # ((column name or None for an expression, desc, collation), ...)
    sql: str | None


@dataclass
class Table:
    """A table, its indexes and triggers, as SQLite's introspection shows them."""
    name: str
    strict: bool
    without_rowid: bool
    autoincrement: bool
    columns: dict[str, Column]
    indexes: dict[str, Index]
    foreign_keys: list[tuple]    # (columns, parent, parent columns, on update, on delete, match)
    constraints: Counter         # (kind, ON CONFLICT action, SQLite's own text) of an INSERT
    deferred: int                # foreign keys checked at COMMIT (-1: unknown)
    triggers: dict[str, str]     # name -> SQL
    sequence: int | None


@dataclass
class Intent:
    """What the batch operations ask to change, from Alembic's reflected and new tables."""
    renamed: dict[str, str]                  # old column name -> new
    dropped: set[str]
    changed: dict[str, set[str]]             # new column name -> facets asked to change
    dropped_indexes: set[str]
    new_indexes: set[str]
    unique_sets_dropped: list[frozenset]     # column sets of UNIQUE constraints dropped
    unique_sets_added: list[frozenset]       # and added
    foreign_keys_changed: bool
    renamed_any: bool
    table_options: set[str]                  # autoincrement / without_rowid asked


@dataclass
class Copy:
    """A table copy in progress: the table before it, what was asked, what we took away."""
    before: Table
    intent: Intent
    dependents: list[tuple[str, str, str]] = field(default_factory=list)  # type, name, sql


def install(migration_context) -> None:
    """Give a SQLite migration context our impl: native ALTER where SQLite can, judged copies
    where it cannot. Call after context.configure()."""
    impl = migration_context.impl
    if type(impl) is not SQLiteImpl:  # another backend, already ours, or an app's own impl
        return
    impl.__class__ = KeepingSQLiteImpl
    impl.safe_migrate_losses = []


def losses(migration_context) -> list[tuple[str, str]]:
    """(table, what) the copies since the last call lost and could not keep; cleared."""
    found = getattr(migration_context.impl, "safe_migrate_losses", [])
    taken = list(found)
    found.clear()
    return taken


class KeepingSQLiteImpl(SQLiteImpl):
    """Alembic's SQLite impl, deciding natively where SQLite can and judging every copy."""

    safe_migrate_losses: list[tuple[str, str]]

    def requires_recreate_in_batch(self, batch_op) -> bool:
        # BatchOperationsImpl also asks while an add_column(insert_before=...) is being
        # queued, before the batch is complete; only its flush() may run anything.
        if sys._getframe(2).f_code.co_name != "flush":
            return super().requires_recreate_in_batch(batch_op)
        if not self.natively_possible(batch_op):
            return True
        try:
            with self.connection.begin_nested():
                for name, args, kw in batch_op.batch:
                    getattr(self, name)(*args, **kw)
        except sa.exc.OperationalError:
            return True  # SQLite refused: Alembic's copy, judged
        batch_op.batch[:] = []  # done; flush() has nothing left to run
        return False

    def natively_possible(self, batch_op) -> bool:
        """Whether every operation of the batch is one SQLite's ALTER TABLE may do."""
        if batch_op.table_args or batch_op.table_kwargs or batch_op.copy_from is not None \
                or batch_op.partial_reordering:
            return False  # the revision asks for a new table definition
        version = self.connection.dialect.dbapi.sqlite_version_info
        for name, _args, kw in batch_op.batch:
            if name not in NATIVE or version < NATIVE[name]:
                return False
            if name == "add_column" and (kw.get("insert_before") or kw.get("insert_after")):
                return False
            if name == "alter_column" and (
                    not kw.get("name") or any(kw.get(k, unset) is not unset
                                              for k, unset in ALTERATIONS.items())):
                return False
        return True

    def prep_table_for_batch(self, batch_impl, table) -> None:
        """A copy starts: record the table, take away views and other tables' triggers (they
        would stop the rename), and settle the copy once Alembic has made its indexes."""
        super().prep_table_for_batch(batch_impl, table)
        connection = self.connection
        copy = Copy(read_table(connection, table.name), intent_of(batch_impl, self.dialect))
        keep_declared_types(batch_impl.new_table, copy, self.dialect)
        copy.dependents = take_dependents(connection, table.name)
        self.safe_migrate_copying = (table.name, batch_impl.new_table)  # see _exec
        gather = batch_impl._gather_indexes_from_both_tables

        def gather_then_settle():
            # Alembic creates these indexes right after the rename; when it has made the
            # last one, the copy is complete.
            yield from gather()
            self.safe_migrate_losses.extend(
                (table.name, what) for what in settle(connection, copy))

        batch_impl._gather_indexes_from_both_tables = gather_then_settle


    def _exec(self, construct, *args, **kw):
        # The copy's INSERT ... SELECT into the new table counts its rows for the progress
        # line on a terminal (progress.counted_copy); every other statement as it is.
        copying = getattr(self, "safe_migrate_copying", None)
        if copying is None or getattr(construct, "table", None) is not copying[1]:
            return super()._exec(construct, *args, **kw)
        self.safe_migrate_copying = None
        try:
            return super()._exec(progress.counted_copy(construct, copying[0],
                                                       self.connection.connection),
                                 *args, **kw)
        finally:
            progress.copy_done()


def quote(connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def read_table(connection, name: str) -> Table:
    """The table `name` as SQLite's introspection shows it."""
    def rows(sql: str, *params) -> list:
        return connection.exec_driver_sql(sql, params).all()

    listed = rows("SELECT strict, wr FROM pragma_table_list(?) WHERE schema = 'main'", name)
    strict, without_rowid = listed[0] if listed else (0, 0)
    [table_sql] = rows("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", name)[0]
    probed = probe(connection, table_sql, name)
    columns = {
        col: Column(declared, probed["affinity"].get(col, ""), bool(notnull), default, pk,
                    hidden, probed["collation"].get(col))
        for _cid, col, declared, notnull, default, pk, hidden
        in rows("SELECT * FROM pragma_table_xinfo(?)", name)}
    indexes = {}
    for _seq, index, unique, origin, partial in rows("SELECT * FROM pragma_index_list(?)", name):
        keys = tuple((col, bool(desc), coll) for _seqno, _cid, col, desc, coll, key
                     in rows("SELECT * FROM pragma_index_xinfo(?)", index) if key)
        sql = rows("SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?", index)
        indexes[index] = Index(index, bool(unique), origin, bool(partial), keys,
                               sql[0][0] if sql else None)
    keys: dict[int, list] = {}
    for fk_id, _seq, parent, src, dest, on_update, on_delete, match \
            in rows("SELECT * FROM pragma_foreign_key_list(?)", name):
        keys.setdefault(fk_id, []).append((src, parent, dest, on_update, on_delete, match))
    foreign_keys = [(tuple(k[0] for k in key), key[0][1], tuple(k[2] for k in key),
                     *key[0][3:]) for key in keys.values()]
    triggers = dict(rows("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' "
                         "AND tbl_name = ? ORDER BY rowid", name))
    sequence = None
    if rows("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'"):
        found = rows("SELECT seq FROM sqlite_sequence WHERE name = ?", name)
        sequence = found[0][0] if found else None
    return Table(name, bool(strict), bool(without_rowid), probed["autoincrement"], columns,
                 indexes, foreign_keys, probed["constraints"], probed["deferred"], triggers,
                 sequence)


def probe(connection, table_sql: str, name: str) -> dict[str, Any]:
    """What only SQLite's behaviour shows of a table, learned from an empty copy of its
    definition in a scratch in-memory database: each column's default collation (the one
    an index on it uses), its affinity (the type CREATE TABLE AS declares), whether it has
    AUTOINCREMENT (SQLite then makes sqlite_sequence), and the constraints an INSERT
    checks with their ON CONFLICT action (the Halt instructions of its program)."""
    found: dict[str, Any] = {"collation": {}, "affinity": {}, "autoincrement": False,
                             "constraints": Counter(), "deferred": -1}
    q = connection.dialect.identifier_preparer.quote
    with closing(sqlite3.connect(":memory:")) as scratch:
        try:
            scratch.execute(table_sql)
        except sqlite3.Error:
            return found  # e.g. a collation only the app's connection defines
        found["autoincrement"] = bool(scratch.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'").fetchall())
        columns = [row[1] for row in scratch.execute("SELECT * FROM pragma_table_xinfo(?)",
                                                     (name,))]
        for column in columns:
            try:
                scratch.execute(f"CREATE INDEX safe_migrate_probe ON {q(name)} ({q(column)})")
            except sqlite3.Error:
                continue
            found["collation"][column] = scratch.execute(
                "SELECT coll FROM pragma_index_xinfo('safe_migrate_probe') WHERE key"
            ).fetchone()[0]
            scratch.execute("DROP INDEX safe_migrate_probe")
        scratch.execute(f"CREATE TABLE safe_migrate_affinity AS SELECT * FROM {q(name)}")
        found["affinity"] = {row[1]: row[2] for row in scratch.execute(
            "SELECT * FROM pragma_table_xinfo('safe_migrate_affinity')")}
        insert = (f"EXPLAIN INSERT INTO {q(name)} ({', '.join(q(c) for c in columns)}) "
                  f"VALUES ({', '.join('?' for _ in columns)})")
        try:
            program = scratch.execute(insert, [None] * len(columns)).fetchall()
        except sqlite3.Error:
            program = []  # e.g. generated columns cannot be inserted into
        for _addr, opcode, code, on_error, _p3, text, _p5, _comment in program:
            if opcode in ("Halt", "HaltIfNull") and code in CONSTRAINT_CODES:
                found["constraints"][(CONSTRAINT_CODES[code],
                                      ON_CONFLICT.get(on_error, str(on_error)), text)] += 1
        found["deferred"] = deferred_foreign_keys(
            scratch, name, insert, len(columns))
    return found


def deferred_foreign_keys(scratch: sqlite3.Connection, name: str, insert: str,
                          width: int) -> int:
    """How many of the table's foreign keys SQLite checks at COMMIT (DEFERRABLE INITIALLY
    DEFERRED): the deferred-constraint counters of an INSERT's program (FkCounter P1=1), in
    the scratch database with empty stand-ins for the parent tables."""
    q = sqlite3_quote
    keys: dict[int, tuple[str, list]] = {}
    for fk_id, _seq, parent, _src, dest, *_rest in scratch.execute(
            "SELECT * FROM pragma_foreign_key_list(?)", (name,)):
        keys.setdefault(fk_id, (parent, []))[1].append(dest)
    parents: dict[str, list] = {}
    for parent, dest in keys.values():
        if parent != name:
            parents.setdefault(parent, []).append(dest)
    try:
        for parent, keyed in parents.items():
            columns = sorted({c for dest in keyed for c in dest if c is not None})
            definition = [f"{q('safe_migrate_pk')} INTEGER PRIMARY KEY"] + [q(c) for c in columns]
            definition += [f"UNIQUE ({', '.join(q(c) for c in dest)})"
                           for dest in keyed if None not in dest]
            scratch.execute(f"CREATE TABLE {q(parent)} ({', '.join(definition)})")
        scratch.execute("PRAGMA foreign_keys = ON")
        program = scratch.execute(insert, [None] * width).fetchall()
    except sqlite3.Error:
        return -1  # unknown
    return sum(1 for row in program if row[1] == "FkCounter" and row[2] == 1 and row[3] > 0)


def sqlite3_quote(name: str) -> str:
    """An identifier for the scratch database, quoted as SQLAlchemy's SQLite dialect does."""
    return SCRATCH_DIALECT.identifier_preparer.quote(name)


class Declared(sa.types.UserDefinedType):
    """A column's type as SQLite holds it (PRAGMA table_xinfo), written back unchanged."""
    cache_ok = True

    def __init__(self, text: str) -> None:
        self.text = text

    def get_col_spec(self, **kw) -> str:
        return self.text


def keep_declared_types(new_table: sa.Table, copy: Copy, dialect) -> None:
    """Give each column of the copy whose type the batch leaves alone the type SQLite
    declared, where SQLAlchemy's reflection would write another (a STRICT table's ANY
    reflects as NUMERIC, which STRICT refuses; INT PRIMARY KEY would become INTEGER PRIMARY
    KEY, a rowid alias) and SQLite reads the declared text back as the same type."""
    intent = copy.intent
    for old_name, column in copy.before.columns.items():
        name = intent.renamed.get(old_name, old_name)
        if old_name in intent.dropped or "type" in intent.changed.get(name, ()) \
                or name not in new_table.c:
            continue
        if compiled(new_table.c[name].type, dialect) != column.declared \
                and declares_itself(column.declared):
            new_table.c[name].type = Declared(column.declared)


def declares_itself(declared: str) -> bool:
    """Whether SQLite, given `declared` as a column's type, declares that same type: PRAGMA
    shows some declarations other than as written (`"my" type` as `my type`)."""
    with closing(sqlite3.connect(":memory:")) as scratch:
        try:  # a type cannot be a bound value; the scratch database is SQLite's judge
            scratch.execute(f"CREATE TABLE t (c {declared})")
        except sqlite3.Error:
            return False
        return scratch.execute("SELECT type FROM pragma_table_xinfo('t')").fetchall() \
            == [(declared,)]


def compiled(type_, dialect) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except sa.exc.SQLAlchemyError:
        return repr(type_)


def intent_of(batch_impl, dialect) -> Intent:
    """What Alembic's batch operations ask to change: the differences between the table
    Alembic reflected (or was given) and the one it is about to create."""
    old, new = batch_impl.table, batch_impl.new_table
    renamed, changed = {}, {}
    for key, column in batch_impl.columns.items():
        if key not in old.c:
            continue  # added
        before = old.c[key]
        renamed[key] = column.name
        facets = set()
        if compiled(before.type, dialect) != compiled(column.type, dialect):
            # A new type changes the column's collation only where it names one
            # (sa.String(320, collation="NOCASE")); else the copy must keep the old one.
            facets |= {"type", "collation"} if getattr(column.type, "collation", None) \
                else {"type"}
        if before.nullable != column.nullable:
            facets.add("notnull")
        if repr(getattr(before.server_default, "arg", None)) != \
                repr(getattr(column.server_default, "arg", None)):
            facets.add("default")
        if before.primary_key != column.primary_key:
            facets.add("pk")
        if facets:
            changed[column.name] = facets
    dropped = {c.name for c in old.c if c.name not in batch_impl.columns}

    def unique_sets(table, rename) -> Counter:
        """Each UNIQUE constraint's column set, counted: two on the same columns are two."""
        return Counter(frozenset(rename.get(c.name, c.name) for c in const.columns)
                       for const in table.constraints if isinstance(const, sa.UniqueConstraint))

    old_uniques, new_uniques = unique_sets(old, renamed), unique_sets(new, {})
    dropped_uniques = list((old_uniques - new_uniques).elements())
    added_uniques = list((new_uniques - old_uniques).elements())

    def foreign_keys(table, rename) -> set:
        # Each referred column as SQLAlchemy spells it (`target_fullname`): the batch's new
        # table refers to tables its MetaData lacks, which SQLAlchemy 2 will not resolve.
        return {(tuple(rename.get(c, c) for c in fk.column_keys),
                 tuple(element.target_fullname for element in fk.elements), fk.ondelete,
                 fk.onupdate, fk.deferrable, fk.initially)
                for fk in table.foreign_key_constraints}

    def options(table) -> dict:
        sqlite = table.dialect_options["sqlite"]
        return {"autoincrement": sqlite["autoincrement"], "without_rowid": not sqlite["with_rowid"]}

    asked = {"autoincrement" if k == "sqlite_autoincrement" else "without_rowid"
             for k in batch_impl.table_kwargs if k in ("sqlite_autoincrement", "sqlite_with_rowid")}
    if not batch_impl.reflected:  # copy_from: the revision defines the table
        asked |= {"autoincrement", "without_rowid"}
    asked |= {k for k, v in options(new).items() if options(old)[k] != v}
    return Intent(
        renamed=renamed, dropped=dropped, changed=changed,
        dropped_indexes={i.name for i in old.indexes} - set(batch_impl.indexes),
        new_indexes=set(batch_impl.new_indexes),
        unique_sets_dropped=dropped_uniques, unique_sets_added=added_uniques,
        renamed_any=any(old_name != new_name for old_name, new_name in renamed.items()),
        foreign_keys_changed=foreign_keys(old, renamed) != foreign_keys(new, {}),
        table_options=asked)


def take_dependents(connection, table: str) -> list[tuple[str, str, str]]:
    """Drop every view and every trigger of another table (any may name this table, and
    SQLite's RENAME would refuse them once it is gone); return them, to recreate."""
    found = connection.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_schema WHERE (type = 'view' OR (type = 'trigger' "
        "AND tbl_name != ?)) AND sql IS NOT NULL ORDER BY rowid", (table,)).all()
    for kind, name, _sql in reversed(found):
        connection.exec_driver_sql(f"DROP {'VIEW' if kind == 'view' else 'TRIGGER'} "
                                   f"{quote(connection, name)}")
    return [tuple(row) for row in found]


def settle(connection, copy: Copy) -> list[str]:
    """After a copy: put back what Alembic's copy dropped and can be put back (indexes and
    triggers from their SQL, the views and triggers taken away, the sqlite_sequence value);
    return what is still lost."""
    before, intent = copy.before, copy.intent
    name = before.name
    lost = []
    after = read_table(connection, name)
    for index in before.indexes.values():
        if index.origin != "c" or index.name in intent.dropped_indexes \
                or index.name in intent.new_indexes:
            continue
        if any(col in intent.dropped for col, _desc, _coll in index.keys):
            continue  # an index of a dropped column goes with it
        expected = renamed_keys(index.keys, intent)
        now = after.indexes.get(index.name)
        if now and (now.keys, now.unique, now.partial) == (expected, index.unique, index.partial) \
                and (expected == index.keys or now.sql == index.sql or None not in [
                    k[0] for k in expected]):
            continue
        if not recreate(connection, index.sql, index.name if now else None, "INDEX"):
            lost.append(f"index {index.name}")
    for trigger, sql in before.triggers.items():
        if trigger not in after.triggers and not recreate(connection, sql, None, "TRIGGER"):
            lost.append(f"trigger {trigger}")
    for kind, dependent, sql in copy.dependents:
        if not recreate(connection, sql, None, kind.upper()) \
                or kind == "view" and not compiles(connection, dependent):
            lost.append(f"{kind} {dependent} (it refers to what the copy removed; drop or "
                        "change it in the revision first)")
    if before.sequence is not None and after.autoincrement:
        # The copy's rows keep their ids; the counter must not hand out ids used before.
        connection.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
        connection.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, max(?, (SELECT "
            f"coalesce(max(rowid), 0) FROM {quote(connection, name)})))",
            (name, before.sequence))
    return lost + differences(connection, before, read_table(connection, name), intent)


def renamed_keys(keys: tuple, intent: Intent) -> tuple:
    return tuple((intent.renamed.get(col, col) if col else col, desc, coll)
                 for col, desc, coll in keys)


def recreate(connection, sql: str | None, replacing: str | None, kind: str) -> bool:
    """Run an object's original CREATE statement (after dropping `replacing`), in a
    SAVEPOINT; False if SQLite refuses it."""
    if sql is None:
        return False
    try:
        with connection.begin_nested():
            if replacing:
                connection.exec_driver_sql(f"DROP {kind} {quote(connection, replacing)}")
            connection.exec_driver_sql(sql)
    except sa.exc.DBAPIError:
        return False
    return True


def compiles(connection, view: str) -> bool:
    """Whether SQLite can compile a SELECT of this view (CREATE VIEW does not check that the
    columns it names exist; a SELECT does)."""
    try:
        with connection.begin_nested():
            connection.exec_driver_sql(f"EXPLAIN SELECT * FROM {quote(connection, view)}").all()
    except sa.exc.DBAPIError:
        return False
    return True


def differences(connection, before: Table, after: Table, intent: Intent) -> list[str]:
    """What `after` lacks of `before` that the batch operations did not ask to change."""
    name = before.name
    lost = []
    if before.strict and not after.strict:
        lost.append(f"STRICT of {name}")
    for option, label in (("without_rowid", "WITHOUT ROWID"), ("autoincrement", "AUTOINCREMENT")):
        if option not in intent.table_options and getattr(before, option) \
                and not getattr(after, option):
            lost.append(f"{label} of {name}")
    for old_name, column in before.columns.items():
        if old_name in intent.dropped or intent.renamed.get(old_name, old_name) not in after.columns:
            continue
        new_name = intent.renamed.get(old_name, old_name)
        now, asked = after.columns[new_name], intent.changed.get(new_name, set())
        for facet, label in (("collation", "COLLATE {}"), ("affinity", "type {}"),
                             ("notnull", "NOT NULL"), ("default", "DEFAULT {}"),
                             ("hidden", "GENERATED"), ("pk", "PRIMARY KEY")):
            was, is_now = getattr(column, facet), getattr(now, facet)
            if ("type" if facet == "affinity" else facet) in asked or was is None or was == is_now:
                continue
            shown = column.declared if facet == "affinity" else was
            if was or facet == "affinity":
                lost.append(f"{label.format(shown)} of {name}.{new_name}")
            else:
                lost.append(f"the {facet} of {name}.{new_name} (the copy has {is_now!r})")
    after_keyed = Counter((i.unique, i.partial, i.keys) for i in after.indexes.values()
                          if i.origin != "c")
    excused = Counter(intent.unique_sets_dropped)  # each dropped UNIQUE excuses one index
    for index in before.indexes.values():
        if index.origin == "c":
            continue
        keys = renamed_keys(index.keys, intent)
        columns = frozenset(k[0] for k in keys)
        if any(k[0] in intent.dropped for k in index.keys) \
                or any("collation" in intent.changed.get(k[0], ()) for k in keys):
            continue
        if index.origin == "u" and excused[columns] and not after_keyed[
                (index.unique, index.partial, keys)]:
            excused[columns] -= 1
            continue
        if after_keyed[(index.unique, index.partial, keys)]:
            after_keyed[(index.unique, index.partial, keys)] -= 1
        else:
            what = ", ".join(describe_key(k) for k in keys)
            lost.append(f"{'UNIQUE' if index.origin == 'u' else 'PRIMARY KEY'} ({what}) of {name}")
    if not intent.foreign_keys_changed:
        kept = [fk for fk in before.foreign_keys if not set(fk[0]) & intent.dropped]
        for fk in kept:
            mapped = (tuple(intent.renamed.get(c, c) for c in fk[0]), *fk[1:])
            if mapped not in after.foreign_keys:
                lost.append(f"FOREIGN KEY ({', '.join(mapped[0])}) REFERENCES {fk[1]} ON UPDATE "
                            f"{fk[3]} ON DELETE {fk[4]} of {name}")
        if before.deferred != after.deferred and min(before.deferred, after.deferred) >= 0 \
                and len(kept) == len(before.foreign_keys):
            lost.append(f"DEFERRABLE INITIALLY DEFERRED of {before.deferred} foreign key(s) of "
                        f"{name} (the copy defers {after.deferred})")
    lost += constraint_differences(connection, before, after, intent)
    return lost


def describe_key(key: tuple) -> str:
    column, desc, collation = key
    text = column or "<expression>"
    if collation and collation != "BINARY":
        text += f" COLLATE {collation}"
    return text + (" DESC" if desc else "")


def constraint_differences(connection, before: Table, after: Table,
                           intent: Intent) -> list[str]:
    """The NOT NULL / UNIQUE / PRIMARY KEY checks with their ON CONFLICT action, and the
    CHECK constraints, of an INSERT into the old table that one into the new table does
    differently. SQLite names a NOT NULL or UNIQUE check `table.column, ...` (none at all
    for ON CONFLICT IGNORE or REPLACE), a CHECK by its name or its text."""
    name = before.name
    untouched = {old: new for old, new in intent.renamed.items() if new not in intent.changed}
    renamed = {f"{name}.{old}": f"{name}.{new}" for old, new in untouched.items()}
    kept_names = set(renamed.values())

    def in_scope(text: str, names: set[str]) -> bool:
        parts = text.split(", ")
        columns = frozenset(p.split(".", 1)[1] for p in parts if "." in p)
        return all(p in names for p in parts) and columns not in intent.unique_sets_dropped \
            and columns not in intent.unique_sets_added

    old = Counter()
    for (kind, action, text), count in before.constraints.items():
        if kind != "CHECK" and in_scope(text or "", set(renamed)):
            old[(kind, action, ", ".join(renamed[p] for p in text.split(", ")))] += count
    new = Counter({key: count for key, count in after.constraints.items()
                   if key[0] != "CHECK" and in_scope(key[2] or "", kept_names)})
    lost = [f"{kind} {text} ON CONFLICT {action} of {name}"
            for (kind, action, text) in sorted((old - new).elements())]
    lost += [f"the ON CONFLICT clause of {kind} {text} (the copy has {action}) of {name}"
             for (kind, action, text) in sorted((new - old).elements())]
    checks = Counter({k: c for k, c in after.constraints.items() if k[0] == "CHECK"})
    for key in sorted((Counter({k: c for k, c in before.constraints.items()
                                if k[0] == "CHECK"}) - checks).elements()):
        # An unnamed CHECK's text is its expression: lost if it still applies to the new
        # table (SQLite compiles it); a named one shows only its name.
        if applies(connection, name, key[2]) or not (intent.dropped or intent.changed
                                                     or intent.renamed_any):
            lost.append(f"CHECK ({key[2]}) of {name}")
    return lost


def applies(connection, table: str, expression: str) -> bool:
    """Whether SQLite compiles this expression (SQLite's own text of a CHECK) over the table."""
    try:
        with connection.begin_nested():
            connection.exec_driver_sql(
                f"EXPLAIN SELECT ({expression}) FROM {quote(connection, table)}").all()
    except sa.exc.DBAPIError:
        return False
    return True
