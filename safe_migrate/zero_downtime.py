"""The zero-downtime pattern `db migrate` writes on PostgreSQL (`db migrate --plain`: not).

Autogenerate's operations are rewritten, before Alembic renders them, into ones that never
hold a lock other queries wait behind for as long as a table is read or rewritten:

- on tables that exist, indexes are created and dropped CONCURRENTLY, in
  `op.get_context().autocommit_block()` (no transaction can hold such a statement);
- foreign keys are added NOT VALID in the revision's transaction, and validated (a scan that
  lets reads and writes go on) after it, in the autocommit block;
- SET NOT NULL goes through CHECK (col IS NOT NULL) NOT VALID, validated in the block; the
  SET NOT NULL after it (PostgreSQL 12 and later) skips its scan, and the CHECK is dropped;
- a new column whose default PostgreSQL computes per row (it would rewrite the table: asked
  of PostgreSQL itself, on a temporary table) is added without one, gets the default for new
  rows, and the rows there are filled by `safe_migrate.backfill` in batches in the block;
- a rename or a type change, which breaks the app instances still running the old code
  during a rolling deploy, gets a comment in the revision and a warning with the
  expand/contract recipe.

The revision stays plain Alembic: Alembic's own renderers write every operation, and the
few this module adds (the block, the CHECK, VALIDATE, the backfill, the comment) are
operations with renderers of their own, whose names reach SQL through SQLAlchemy's quoting.
"""
from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.render import _render_potential_expr, render_op
from alembic.operations import ops
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement

ROLLING_DEPLOY = ("rolling deploy: {what} breaks the app instances still running the old code; "
                  "expand/contract instead: add the new column, have the app write both, fill it "
                  "with safe_migrate.backfill, switch reads to it, and drop the old one in a "
                  "later revision")


class ValidateConstraint(DDLElement):
    """ALTER TABLE ... VALIDATE CONSTRAINT ..., for op.execute()."""

    def __init__(self, name: str, table_name: str, schema: str | None = None) -> None:
        self.name = name
        self.table_name = table_name
        self.schema = schema


@compiles(ValidateConstraint)
def compile_validate(element: ValidateConstraint, compiler, **kw) -> str:
    preparer = compiler.preparer
    table = preparer.format_table(sa.table(element.table_name, schema=element.schema))
    return f"ALTER TABLE {table} VALIDATE CONSTRAINT {preparer.quote(element.name)}"


# --- the operations this module adds, and how each is written in the revision --------------


class AutocommitBlock(ops.OpContainer):
    """Operations run outside the revision's transaction, each committing on its own."""


class NotNullCheck(ops.CreateCheckConstraintOp):
    """CHECK (column IS NOT NULL) NOT VALID: what lets SET NOT NULL skip its scan."""

    def __init__(self, name: str, table_name: str, column_name: str,
                 schema: str | None = None) -> None:
        super().__init__(name, table_name, sa.column(column_name).is_not(None), schema=schema,
                         postgresql_not_valid=True)
        self.column_name = column_name


class Validate(ops.MigrateOperation):
    """VALIDATE CONSTRAINT of a constraint added NOT VALID."""

    def __init__(self, name: str, table_name: str, schema: str | None = None) -> None:
        self.name = name
        self.table_name = table_name
        self.schema = schema


class Backfill(ops.MigrateOperation):
    """safe_migrate.backfill() of a new column with its default."""

    def __init__(self, table_name: str, column_name: str, value, schema: str | None = None,
                 batch: int = 10_000) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.value = value
        self.schema = schema
        self.batch = batch


class SetNotNull(ops.AlterColumnOp):
    """SET NOT NULL once a valid CHECK says so: no scan, a lock held for a moment."""


class Note(ops.MigrateOperation):
    """A comment in the revision, before the operation it is about."""

    def __init__(self, text: str) -> None:
        self.text = text


def schema_arg(schema: str | None) -> str:
    return f", schema={schema!r}" if schema else ""


def render_block(autogen_context, op: AutocommitBlock) -> list[str]:
    lines = ["# Outside the transaction, each statement committing on its own (zero-downtime",
             "# pattern of safe_migrate; `db migrate --plain` writes plain operations)",
             "with op.get_context().autocommit_block():"]
    for inner in op.ops:
        lines += render_op(autogen_context, inner)
    return [*lines, ""]


def render_check(autogen_context, op: NotNullCheck) -> str:
    return (f"op.create_check_constraint(op.f({str(op.constraint_name)!r}), {op.table_name!r}, "
            f"sa.column({op.column_name!r}).is_not(None){schema_arg(op.schema)}, "
            "postgresql_not_valid=True)")


def render_validate(autogen_context, op: Validate) -> str:
    autogen_context.imports.add("from safe_migrate.zero_downtime import ValidateConstraint")
    return (f"op.execute(ValidateConstraint({str(op.name)!r}, {op.table_name!r}"
            f"{schema_arg(op.schema)}))")


def render_backfill(autogen_context, op: Backfill) -> str:
    autogen_context.imports.add("from safe_migrate import backfill")
    value = _render_potential_expr(op.value, autogen_context, is_server_default=True)
    return (f"backfill({op.table_name!r}, set={{{op.column_name!r}: {value}}}, "
            f"batch={op.batch:_}{schema_arg(op.schema)})")


def render_note(autogen_context, op: Note) -> list[str]:
    words, lines = op.text.split(), ["#"]
    for word in words:
        if len(lines[-1]) + len(word) > 90:
            lines.append("#")
        lines[-1] += f" {word}"
    return lines


# Alembic's registry is process-wide and refuses a second registration.
for _op, _renderer in ((AutocommitBlock, render_block), (NotNullCheck, render_check),
                       (Validate, render_validate), (Backfill, render_backfill),
                       (Note, render_note)):
    try:
        renderers.dispatch_for(_op)(_renderer)
    except ValueError:  # pragma: no cover - already registered by an earlier import
        pass


# --- the rewrite ---------------------------------------------------------------------------


def rewrite(script, migration_context) -> list[str]:
    """Rewrite the revision's upgrade and downgrade into the pattern (see the module's
    docstring); return the warnings for the terminal (renames and type changes)."""
    warnings = Rewrite(migration_context, notes=True).apply(script.upgrade_ops)
    Rewrite(migration_context, notes=False).apply(script.downgrade_ops)
    return warnings


def unguarded(operations):
    """The operations whose lock the pattern does not already keep short (for lock_hazards)."""
    return [op for op in operations if not isinstance(op, SetNotNull)]


class Rewrite:
    """One stream's (upgrade's or downgrade's) operations, into three parts: in the
    revision's transaction, in an autocommit block after it, and in a transaction after."""

    def __init__(self, migration_context, notes: bool) -> None:
        self.migration_context = migration_context
        self.notes = notes
        self.warnings: list[str] = []
        self.checks: list[ops.MigrateOperation] = []  # in the transaction, after the rest
        self.indexes: list[ops.MigrateOperation] = []  # in the block, first
        self.fills: list[ops.MigrateOperation] = []  # in the block, then
        self.validations: list[ops.MigrateOperation] = []  # in the block, last
        self.after: list[ops.MigrateOperation] = []  # in a transaction after the block

    def apply(self, container: ops.OpContainer) -> list[str]:
        new = {(op.schema, op.table_name) for op in container.ops
               if isinstance(op, ops.CreateTableOp)}
        dropped = {(op.schema, op.table_name) for op in container.ops
                   if isinstance(op, ops.DropTableOp)}
        first = []
        for op in container.ops:
            if isinstance(op, ops.ModifyTableOps) and (op.schema, op.table_name) not in new:
                # An index dropped later than a column or a table it goes with fails.
                changes_columns = any(isinstance(o, (ops.DropColumnOp, ops.AlterColumnOp))
                                      for o in op.ops)
                drops = (op.schema, op.table_name) not in dropped and not changes_columns
                op.ops[:] = [kept for inner in op.ops
                             for kept in self.table_op(inner, True, drops)]
                if op.ops:
                    first.append(op)
            else:
                first += self.table_op(op, False, False)
        block = self.indexes + self.fills + self.validations
        container.ops[:] = (first + self.checks
                            + ([AutocommitBlock(block)] if block else []) + self.after)
        return self.warnings

    def table_op(self, op, creates: bool, drops: bool) -> list[ops.MigrateOperation]:
        """What stays in the transaction in place of `op`; the rest is queued. `creates`,
        `drops`: whether an index created, dropped, may be so concurrently, after the
        transaction."""
        if isinstance(op, ops.RenameTableOp):
            return self.noted(f"renaming table {op.table_name} to {op.new_table_name}", op)
        if isinstance(op, ops.CreateIndexOp):
            return self.index(op, creates)
        if isinstance(op, ops.DropIndexOp):
            return self.index(op, drops)
        if isinstance(op, ops.CreateForeignKeyOp) and op.constraint_name is not None:
            op.kw["postgresql_not_valid"] = True
            self.validations.append(Validate(op.constraint_name, op.source_table,
                                             op.kw.get("source_schema")))
            return [op]
        if isinstance(op, ops.AlterColumnOp):
            return self.alter_column(op)
        if isinstance(op, ops.AddColumnOp) and rewrites_table(self.migration_context,
                                                                op.column):
            return self.add_column(op)
        return [op]

    def index(self, op, movable: bool) -> list[ops.MigrateOperation]:
        if not movable:
            return [op]
        op.kw["postgresql_concurrently"] = True
        self.indexes.append(op)
        return []

    def noted(self, what: str, op) -> list[ops.MigrateOperation]:
        if not self.notes:
            return [op]
        line = ROLLING_DEPLOY.format(what=what)
        self.warnings.append(line)
        return [Note(line), op]

    def alter_column(self, op: ops.AlterColumnOp) -> list[ops.MigrateOperation]:
        column = op.modify_name or op.column_name
        what = []
        if op.modify_name:
            what.append(f"renaming column {op.table_name}.{op.column_name} to {op.modify_name}")
        if op.modify_type is not None:
            what.append(f"changing the type of {op.table_name}.{column} from "
                        f"{op.existing_type} to {op.modify_type}")
        if op.modify_nullable is False:
            op.modify_nullable = None
            name = check_name(op.table_name, column)
            self.checks.append(NotNullCheck(name, op.table_name, column, op.schema))
            self.not_null(op.table_name, column, op.schema, name,
                          op.modify_type if op.modify_type is not None else op.existing_type)
        if not (op.has_changes() or op.modify_name):
            return []
        return self.noted(" and ".join(what), op) if what else [op]

    def add_column(self, op: ops.AddColumnOp) -> list[ops.MigrateOperation]:
        column = op.column
        default = column.server_default
        bare = column._copy()
        bare.server_default = None
        bare.nullable = True
        self.fills.append(Backfill(op.table_name, column.name, default.arg, op.schema))
        if not column.nullable:
            name = check_name(op.table_name, column.name)
            self.fills.append(NotNullCheck(name, op.table_name, column.name, op.schema))
            self.not_null(op.table_name, column.name, op.schema, name, column.type)
        return [ops.AddColumnOp(op.table_name, bare, schema=op.schema),
                ops.AlterColumnOp(op.table_name, column.name, schema=op.schema,
                                  existing_type=column.type, existing_nullable=True,
                                  modify_server_default=default)]

    def not_null(self, table: str, column: str, schema: str | None, check: str,
                 type_) -> None:
        """VALIDATE the CHECK in the block; SET NOT NULL and drop the CHECK after it."""
        self.validations.append(Validate(check, table, schema))
        self.after += [
            SetNotNull(table, column, schema=schema, existing_type=type_,
                       modify_nullable=False),
            ops.DropConstraintOp(sa.sql.elements.conv(check), table, type_="check",
                                 schema=schema),
        ]


def check_name(table: str, column: str) -> str:
    """ck_<table>_<column>_not_null, within PostgreSQL's 63 bytes (a hash ends a longer one)."""
    name = f"ck_{table}_{column}_not_null"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name
    while len(f"{head}_{digest}".encode()) > 63:
        head = head[:-1]
    return f"{head}_{digest}"


PROBE = "safe_migrate_default_probe"


def rewrites_table(migration_context, column: sa.Column) -> bool:
    """Whether adding `column` with its default rewrites a table that has rows: PostgreSQL
    says, on a temporary table of one row in a transaction rolled back (its data file
    changes). A constant default never does; a default PostgreSQL cannot add says no."""
    default = column.server_default
    if not isinstance(default, sa.DefaultClause) or isinstance(default.arg, str):
        return False
    connection = migration_context.connection
    probe = sa.Table(PROBE, sa.MetaData(), sa.Column("k", sa.Integer), schema="pg_temp",
                     prefixes=["TEMPORARY"])
    pg_class = sa.table("pg_class", sa.column("oid"), sa.column("relfilenode"))
    data_file = sa.select(pg_class.c.relfilenode).where(
        pg_class.c.oid == sa.func.to_regclass(f"pg_temp.{PROBE}"))
    transaction = connection.begin_nested() if connection.in_transaction() else \
        connection.begin()
    try:
        probe.create(connection)
        connection.execute(probe.insert().values(k=1))
        before = connection.execute(data_file).scalar()
        migration_context.impl.add_column(PROBE, sa.Column(
            "probe", column.type, server_default=sa.DefaultClause(default.arg)),
            schema="pg_temp")
        return connection.execute(data_file).scalar() != before
    except sa.exc.DBAPIError:
        return False
    finally:
        transaction.rollback()
