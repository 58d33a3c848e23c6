"""Property (issue 20, item 7): whatever a SQLite table holds and whatever batch operation a
revision runs on it, the run either keeps every property the operation did not target, or is
refused with the database file byte-identical.

In-process, on a real SQLite file: the app engine's listeners (safe_migrate.sqlite), a
migration connection, Alembic's batch operation through Operations, our impl installed as the
runner installs it, and the runner's rule (losses not accepted: roll back). The oracle is the
test's own: PRAGMAs read here, and behaviour (probe inserts and comparisons, rolled back).

Fixed seed and bounded examples; run longer locally with
`SQLITE_COPIES_EXAMPLES=2000 pytest tests/test_sqlite_copies_property.py`."""
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from safe_migrate import sqlite_copies
from safe_migrate.connections import migration_engine
from safe_migrate.locks import WaitBudget
from safe_migrate.settings import Settings

EXAMPLES = int(os.environ.get("SQLITE_COPIES_EXAMPLES", "120"))
VALUES = {"INTEGER": 7, "TEXT": "Abc", "REAL": 1.5, "BLOB": b"\x01", "ANY": "007",
          "VARCHAR(10)": "Abc", "NUMERIC": "1.10"}
COLUMNS = ["a", "naïve", "c"]
NEIGHBOURS = ["CREATE TABLE parent (id INTEGER PRIMARY KEY)", "INSERT INTO parent VALUES (1)",
              "CREATE TABLE log (n INTEGER)"]


@st.composite
def tables(draw):
    """(statements that make the table and its neighbours, the spec the probes need, the
    operation); `few` tables have at most one feature of each kind drawn."""
    operation = draw(st.sampled_from(["drop x (copy)", "alter x type", "drop x", "add y",
                                      "rename x"]))
    # Half the tables have one kind of feature only, so that copies Alembic makes without
    # loss happen often: the judge must let those run, and keep what they keep.
    only = draw(st.sampled_from([None, "strict", "without_rowid", "collate", "collate", "notnull", "unique",
                                 "check", "generated", "foreign_key", "table_unique"]))

    def maybe(odds: int, kind: str) -> bool:
        if only is not None:
            return kind == only and draw(st.booleans())
        return draw(st.integers(0, odds)) == 0
    # Each feature is drawn rarely enough that many tables have only one or two, so that a
    # copy Alembic can make without loss happens often (the judge must let it run).
    strict = maybe(2, "strict")
    without_rowid = maybe(2, "without_rowid")
    autoincrement = not without_rowid and draw(st.booleans())
    types = ["INTEGER", "TEXT", "REAL", "BLOB"] + (["ANY"] if strict else ["VARCHAR(10)", "NUMERIC"])
    spec = {"types": {}, "without_rowid": without_rowid}
    lines = ["id INTEGER PRIMARY KEY" + (" AUTOINCREMENT" if autoincrement else "")]
    for name in COLUMNS:
        type_ = draw(st.sampled_from(types))
        spec["types"][name] = type_
        line = f'"{name}" {type_}'
        if type_ in ("TEXT", "VARCHAR(10)", "ANY") and maybe(1, "collate"):
            line += draw(st.sampled_from([" COLLATE NOCASE", ' COLLATE "NOCASE"', " COLLATE RTRIM"]))
        line += "" if not maybe(1, "notnull") else draw(st.sampled_from([" NOT NULL", " NOT NULL ON CONFLICT IGNORE",
                                      " NOT NULL ON CONFLICT FAIL"]))
        line += "" if not maybe(1, "unique") else draw(st.sampled_from([" UNIQUE", " UNIQUE ON CONFLICT REPLACE",
                                      " UNIQUE ON CONFLICT ROLLBACK"]))
        if maybe(3, "check"):
            line += " CHECK (length(" + f'"{name}"' + ") < 100)"
        lines.append(line)
    x_type = draw(st.sampled_from(types))
    spec["types"]["x"] = x_type
    lines.append(f"x {x_type}")
    if maybe(3, "generated"):
        lines.append("g TEXT GENERATED ALWAYS AS (upper(a)) " + draw(st.sampled_from(["VIRTUAL", "STORED"])))
    if maybe(2, "foreign_key"):
        lines.append("p INTEGER REFERENCES parent (id)" + draw(st.sampled_from(
            ["", "", " ON DELETE CASCADE", " ON DELETE SET NULL ON UPDATE CASCADE",
             " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"])))
        spec["p"] = True
    if maybe(2, "table_unique"):
        first = draw(st.sampled_from(["a", "a COLLATE NOCASE", "a DESC"]))
        lines.append(f"UNIQUE (\n  {first},\n  c\n)" + draw(st.sampled_from(["", " ON CONFLICT IGNORE"])))
    table = ("CREATE TABLE t (\n  " + ",\n  ".join(lines) + "\n)"
             + (" STRICT" if strict else "") + (", WITHOUT ROWID" if strict and without_rowid
                                                else " WITHOUT ROWID" if without_rowid else ""))
    statements = [*NEIGHBOURS, table]
    indexes = draw(st.lists(st.sampled_from([
        "CREATE INDEX ix_lower ON t (lower(a))",
        "CREATE INDEX ix_partial ON t (c) WHERE c IS NOT NULL",
        'CREATE UNIQUE INDEX ix_naive ON t ("naïve" COLLATE NOCASE DESC)',
        "CREATE INDEX ix_ac ON t (a DESC, c COLLATE RTRIM)"]), unique=True, max_size=3))
    if operation == "drop x" and draw(st.booleans()):
        # SQLite refuses to drop an indexed column: the block falls back to Alembic's copy
        # (which then fails on the index of the dropped column: loud, rolled back).
        indexes.append("CREATE INDEX ix_x ON t (x)")
    statements += indexes
    if draw(st.booleans()):
        statements.append("CREATE TRIGGER t_logged AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); END")
    if draw(st.booleans()):
        statements.append("CREATE VIEW v AS SELECT id, a FROM t")
    if draw(st.booleans()):
        statements.append("CREATE TRIGGER parent_t AFTER DELETE ON parent "
                          "BEGIN UPDATE t SET a = a WHERE id = OLD.id; END")
    return statements, spec, operation


def run_operation(operations: Operations, operation: str, spec) -> None:
    recreate = "always" if operation == "drop x (copy)" else "auto"
    with operations.batch_alter_table("t", recreate=recreate) as batch_op:
        if operation.startswith("drop x"):
            batch_op.drop_column("x")
        elif operation == "add y":
            batch_op.add_column(sa.Column("y", sa.Text))
        elif operation == "rename x":
            batch_op.alter_column("x", new_column_name="x2")
        else:
            batch_op.alter_column("x", type_=sa.Text if spec["types"]["x"] != "TEXT" else sa.Integer)


def migrate(path: Path, operation: str, spec) -> list:
    """Run the operation as the runner does; return the losses (then rolled back)."""
    engine = migration_engine(sa.engine.make_url(f"sqlite:///{path}"), Path(path), Settings(),
                              {}, budget=WaitBudget(60))  # a migration run's, as the runner's
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            context = MigrationContext.configure(connection)
            sqlite_copies.install(context)
            try:
                run_operation(Operations(context), operation, spec)
            except Exception as error:  # noqa: BLE001 - any error fails the run, rolled back
                transaction.rollback()
                return [("t", f"failed: {error}")]
            losses = sqlite_copies.losses(context)
            if losses:
                transaction.rollback()
            else:
                transaction.commit()
            return losses
    finally:
        engine.dispose()


def seed_row(spec) -> dict:
    return {"id": 1, **{c: VALUES[spec["types"][c]] for c in COLUMNS}, **({"p": 1} if "p" in spec else {})}


def probes(spec) -> list[dict]:
    """Rows to insert: the seeded row again, with case and trailing-space variants, with a
    NULL in each column; never column x, which the operation targets."""
    seed = seed_row(spec)
    found = [{**seed, "id": 2}]
    for column in COLUMNS:
        value = seed[column]
        if isinstance(value, str):
            found.append({**seed, "id": 2, column: value.swapcase()})
            found.append({**seed, "id": 2, column: value + "  "})
        found.append({**seed, "id": 2, column: None})
    return found


def behaviour(path: Path, spec) -> list:
    """What each probe insert does (rolled back), and how the kept columns compare."""
    outcomes = []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        for row in probes(spec):
            names = list(row)
            conn.execute("BEGIN")
            try:
                conn.execute(f"INSERT INTO t ({', '.join(q(n) for n in names)}) VALUES "
                             f"({', '.join('?' for _ in names)})", [row[n] for n in names])
                outcome = ("ok", conn.execute("SELECT count(*) FROM t").fetchone()[0])
            except sqlite3.Error as error:
                outcome = ("error", type(error).__name__)
            if conn.in_transaction:  # ON CONFLICT ROLLBACK ended it already
                conn.execute("ROLLBACK")
            outcomes.append(outcome)
        for column in COLUMNS:
            value = seed_row(spec)[column]
            if isinstance(value, str):
                outcomes.append(conn.execute(
                    f"SELECT count(*) FROM t WHERE {q(column)} = ?", (value.swapcase(),)).fetchone())
                outcomes.append(conn.execute(
                    f"SELECT count(*) FROM t WHERE {q(column)} = ?", (value + " ",)).fetchone())
        outcomes.append(conn.execute(
            f"SELECT id, {', '.join(f'{q(c)}, typeof({q(c)})' for c in COLUMNS)} FROM t").fetchall())
    finally:
        conn.close()
    return outcomes


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def introspection(path: Path, operation: str) -> dict:
    """Everything about t but column x, as SQLite's PRAGMAs show it."""
    targeted = {"x", "x2", "y"}
    with sqlite3.connect(path) as conn:
        def rows(sql, *params):
            return conn.execute(sql, params).fetchall()

        def index_keys(name):
            return [(col, desc, coll) for _seq, _cid, col, desc, coll, key
                    in rows("SELECT * FROM pragma_index_xinfo(?)", name) if key]

        indexes = sorted(
            (name if origin == "c" else origin, unique, partial, index_keys(name))
            for _s, name, unique, origin, partial in rows("SELECT * FROM pragma_index_list('t')")
            if not any(col in targeted for col, _d, _c in index_keys(name)))
        return {
            "table": rows("SELECT type, ncol - (SELECT count(*) FROM pragma_table_xinfo('t') "
                          "WHERE name IN ('x', 'x2', 'y')), wr, strict "
                          "FROM pragma_table_list('t') WHERE schema = 'main'"),
            "columns": [r[1:] for r in rows("SELECT * FROM pragma_table_xinfo('t')")
                        if r[1] not in targeted],
            "indexes": indexes,
            "foreign_keys": [r[2:] for r in rows("SELECT * FROM pragma_foreign_key_list('t')")],
            "others": rows("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                           "WHERE type IN ('trigger', 'view') OR "
                           "(type = 'index' AND name NOT IN ('ix_x') AND sql IS NOT NULL) "
                           "ORDER BY name"),
            "autoincrement": rows("SELECT name FROM sqlite_schema WHERE name = 'sqlite_sequence'"),
            "sequence": rows("SELECT * FROM sqlite_sequence") if rows(
                "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'") else [],
        }


@settings(derandomize=True, max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tables())
# A copy whose only loss is a collation Alembic's reflection does not see (always run).
@example(([*NEIGHBOURS, ('CREATE TABLE t (id INTEGER PRIMARY KEY, "a" TEXT COLLATE "NOCASE", '
                         '"naïve" TEXT, "c" INTEGER, x INTEGER)')],
          {"types": {"a": "TEXT", "naïve": "TEXT", "c": "INTEGER", "x": "INTEGER"},
           "without_rowid": False}, "drop x (copy)"))
def test_a_batch_operation_keeps_what_it_does_not_target_or_is_refused(example):
    statements, spec, operation = example
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "app.db"
        with sqlite3.connect(path) as conn:
            for statement in statements:
                conn.execute(statement)
            seed = seed_row(spec)
            conn.execute(f"INSERT INTO t ({', '.join(q(n) for n in seed)}) VALUES "
                         f"({', '.join('?' for _ in seed)})", list(seed.values()))
        before_bytes = hashlib.sha256(path.read_bytes()).hexdigest()
        before = (introspection(path, operation), behaviour(path, spec))

        losses = migrate(path, operation, spec)

        event(f"{operation}: " + ("failed" if losses and losses[0][1].startswith("failed:")
                                  else "refused" if losses else "ran"))
        if losses:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == before_bytes, losses
            return
        after = (introspection(path, operation), behaviour(path, spec))
        for key in before[0]:
            assert after[0][key] == before[0][key], (key, operation, statements[3])
        assert after[1] == before[1], (operation, statements[3])
