"""Autogenerate that keeps data: renames the user confirms become renames, not a drop and
an add; every operation that can lose data is named before it runs; `db check`'s lines."""
from __future__ import annotations

import logging
import re
import sys
import warnings
from contextlib import contextmanager

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.operations import ops

from .errors import MigrationError
from .lock_hazards import lock_hazards
from .names import NamesOnly
from .options import RunOptions


def ask(question: str) -> bool:
    """Ask on the terminal; anything but yes is no."""
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


EXPRESSION_INDEX = re.compile(r"Skipped unsupported reflection of expression-based index (\S+)")


def leave_expression_indexes(object_, name, type_, reflected, compare_to) -> bool:
    """Alembic's include_object hook: an index of the database on an expression, which the
    models do not have, is left as it is (with a NOTE) instead of dropped. SQLAlchemy 1.4
    does not reflect such an index (library_warnings_as_notes says so); 2.0 does, and
    autogenerate would then drop it as "removed"."""
    if type_ == "index" and reflected and compare_to is None and any(
            not isinstance(element, sa.Column) for element in object_.expressions):
        print(f"NOTE: index {name} is on an expression, which autogenerate cannot compare: it "
              "is left as it is", file=sys.stderr)
        return False
    return True


@contextmanager
def library_warnings_as_notes():
    """SQLAlchemy's warnings while autogenerate reflects the database, said once each as a
    NOTE line in our words instead of a Python warning with a source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sa.exc.SAWarning)
        yield
    notes = []
    for warning in caught:
        if not issubclass(warning.category, sa.exc.SAWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
            continue
        message = str(warning.message)
        index = EXPRESSION_INDEX.search(message)
        if index:
            message = (f"index {index.group(1)} is on an expression, which autogenerate cannot "
                       "compare: it is left as it is")
        if message not in notes:
            notes.append(message)
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr)


def insist_on_yes(what: str, question: str, action: str, outcome: str) -> None:
    """Go on only with a yes: asked on a terminal; elsewhere a one-line error naming -x yes."""
    if not sys.stdin.isatty():
        raise MigrationError(f"{what}; {outcome}. To go ahead, add -x yes")
    if not ask(f"{what}. {question}"):
        raise MigrationError(f"{action} cancelled; {outcome}")


def count_rows(connection, table: str, null_in: str | None = None,
               schema: str | None = None) -> int:
    """How many rows the table (in `schema`, None: the default one) holds, or of them hold
    NULL in column `null_in` (0 if there is no such table). Names reach SQL quoted."""
    if not sa.inspect(connection).has_table(table, schema=schema):
        return 0
    query = sa.select(sa.func.count()).select_from(sa.table(table, schema=schema))
    if null_in is not None:
        query = query.where(sa.column(null_in).is_(None))
    return connection.execute(query).scalar()


def confirm_rename(old, new, answers):
    """True or False if -x or the user on a terminal says whether old became new; None if
    nobody can be asked."""
    if old in answers:
        return answers[old] == new
    if sys.stdin.isatty():
        return ask(f"Did you rename {old} to {new}?")
    return None


def same_kind(old_type, new_type):
    return old_type._type_affinity is new_type._type_affinity


def column_renames(table_ops, answers, unanswered):
    """Turn a dropped and an added column of one table into renames, where confirmed."""
    drops = [op for op in table_ops.ops if isinstance(op, ops.DropColumnOp)]
    adds = [op for op in table_ops.ops if isinstance(op, ops.AddColumnOp)]
    renames = []
    for drop in drops:
        old_column = drop.to_column()
        for add in adds:
            if add in table_ops.ops and same_kind(old_column.type, add.column.type):
                old = f"{table_ops.table_name}.{drop.column_name}"
                new = f"{table_ops.table_name}.{add.column.name}"
                answer = confirm_rename(old, new, answers)
                if answer is None:
                    unanswered.append((old, new))
                if answer:
                    table_ops.ops.remove(drop)
                    table_ops.ops.remove(add)
                    renames.append(ops.AlterColumnOp(
                        table_ops.table_name, drop.column_name, modify_name=add.column.name,
                        existing_type=old_column.type, existing_nullable=old_column.nullable,
                        existing_server_default=old_column.server_default or False))
                    break
    return renames


def unique_constraint_renames(old_table, new_table):
    """Unique constraints whose conventional names follow the table's name."""
    old_names = {tuple(c.columns.keys()): c.name for c in old_table.constraints
                 if isinstance(c, sa.UniqueConstraint)}
    changes = []
    for constraint in new_table.constraints:
        columns = tuple(constraint.columns.keys())
        old_name = old_names.get(columns)
        if isinstance(constraint, sa.UniqueConstraint) and old_name not in (None, constraint.name):
            changes += [
                ops.DropConstraintOp(old_name, new_table.name, type_="unique",
                                     _reverse=ops.CreateUniqueConstraintOp(
                                         old_name, new_table.name, list(columns))),
                ops.CreateUniqueConstraintOp(constraint.name, new_table.name, list(columns)),
            ]
    return [ops.ModifyTableOps(new_table.name, changes)] if changes else []


def table_renames(upgrade_ops, answers, unanswered):
    """Turn a dropped and a created table with the same columns into renames."""
    drops = [op for op in upgrade_ops.ops if isinstance(op, ops.DropTableOp)]
    creates = [op for op in upgrade_ops.ops if isinstance(op, ops.CreateTableOp)]
    renames, follow_ups = [], []
    for drop in drops:
        old_table = drop.to_table()
        for create in creates:
            new_table = create.to_table()
            if create not in upgrade_ops.ops or old_table.c.keys() != new_table.c.keys():
                continue
            if not all(same_kind(o.type, n.type) for o, n in zip(old_table.c, new_table.c)):
                continue
            answer = confirm_rename(drop.table_name, create.table_name, answers)
            if answer is None:
                unanswered.append((drop.table_name, create.table_name))
            if answer:
                upgrade_ops.ops.remove(drop)
                upgrade_ops.ops.remove(create)
                renames.append(ops.RenameTableOp(drop.table_name, create.table_name))
                follow_ups += unique_constraint_renames(old_table, new_table)
                break
    return renames, follow_ups


def render_rename_table(autogen_context, op):
    return f"op.rename_table({op.table_name!r}, {op.new_table_name!r})"


# Alembic has the operation but no autogenerate renderer for it. Its registry is
# process-wide and refuses a second registration, so this package registers once.
try:
    renderers.dispatch_for(ops.RenameTableOp)(render_rename_table)
except ValueError:  # pragma: no cover - already registered by an earlier import
    pass


def detect_renames(script, answers):
    """Rewrite drop+add pairs the user confirms as renames: native RENAME statements, not
    table copies, outside any batch block. Returns the pairs nobody could confirm."""
    upgrade_ops = script.upgrade_ops
    unanswered = []
    table_moves, follow_ups = table_renames(upgrade_ops, answers, unanswered)
    column_moves = []
    for table_ops in [op for op in upgrade_ops.ops if isinstance(op, ops.ModifyTableOps)]:
        column_moves += column_renames(table_ops, answers, unanswered)
        if not table_ops.ops:
            upgrade_ops.ops.remove(table_ops)
    if not (table_moves or column_moves):
        return unanswered
    rest = upgrade_ops.ops + follow_ups
    upgrade_ops.ops[:] = table_moves + column_moves + rest
    # Columns are renamed back before the other changes are undone (those name the old
    # columns); tables after (those name the new table).
    script.downgrade_ops.ops[:] = (
        [renamed_back(op) for op in reversed(column_moves)]
        + ops.UpgradeOps(rest).reverse().ops
        + [ops.RenameTableOp(op.new_table_name, op.table_name) for op in reversed(table_moves)]
    )
    return unanswered


def renamed_back(rename):
    # AlterColumnOp.reverse() keeps the name: it only swaps types, nullability and defaults.
    return ops.AlterColumnOp(
        rename.table_name, rename.modify_name, modify_name=rename.column_name,
        existing_type=rename.existing_type, existing_nullable=rename.existing_nullable,
        existing_server_default=rename.existing_server_default)


def each_op(container):
    for op in container.ops:
        yield from each_op(op) if isinstance(op, ops.OpContainer) else [op]


def data_loss_warnings(script, connection):
    """Operations of the upgrade that can lose data, and of the downgrade that cannot run
    on a populated table."""
    def rows(table):  # for the messages below
        return count_rows(connection, table)

    warnings = []
    for op in each_op(script.upgrade_ops):
        if isinstance(op, ops.DropTableOp):
            warnings.append(f"upgrade drops table {op.table_name} ({rows(op.table_name)} rows)")
        elif isinstance(op, ops.DropColumnOp):
            warnings.append(f"upgrade drops column {op.table_name}.{op.column_name} "
                            f"(values of {rows(op.table_name)} rows)")
        elif isinstance(op, ops.AlterColumnOp) and narrows(op.existing_type, op.modify_type):
            warnings.append(f"upgrade narrows {op.table_name}.{op.column_name} from "
                            f"{op.existing_type} to {op.modify_type}: values may not fit")
    for stream, streams_ops in (("upgrade", script.upgrade_ops), ("downgrade", script.downgrade_ops)):
        for op in each_op(streams_ops):
            if not adds_not_null_without_default(op):
                continue
            column = op_column_name(op)
            if isinstance(op, ops.AlterColumnOp) and stream == "upgrade":
                # The column exists: only its NULLs block the change.
                blocking = count_rows(connection, op.table_name, null_in=column)
                if blocking:
                    warnings.append(
                        f"upgrade makes {op.table_name}.{column} NOT NULL: it fails while "
                        f"{blocking} row(s) hold NULL there; fill them in the upgrade")
                continue
            warnings.append(
                f"{stream} makes {op.table_name}.{column} NOT NULL without a "
                f"default: it fails on a table with rows ({op.table_name} has "
                f"{rows(op.table_name)} now); fill the column in the {stream}")
    return warnings


def narrows(old_type, new_type):
    if old_type is None or new_type is None:
        return False
    if not same_kind(old_type, new_type):
        return True
    old_length, new_length = getattr(old_type, "length", None), getattr(new_type, "length", None)
    return new_length is not None and (old_length is None or new_length < old_length)


def adds_not_null_without_default(op):
    if isinstance(op, ops.AddColumnOp):
        return not op.column.nullable and op.column.server_default is None
    if isinstance(op, ops.AlterColumnOp):
        return op.modify_nullable is False and not op.existing_server_default
    return False


def op_column_name(op):
    return op.column.name if isinstance(op, ops.AddColumnOp) else op.column_name


def revision_directives_hook(options: RunOptions, autogenerate: bool):
    """Alembic's process_revision_directives: no file when autogenerate finds no change,
    renames where confirmed (-x rename=..., options.py), then a warning for each operation
    that can lose data."""
    answers = dict(options.renames)

    def process_revision_directives(context, revision, directives):
        script = directives[0]
        if autogenerate and not options.names_convention:
            names = NamesOnly(context.connection, context.opts["target_metadata"])
            names.leave_out(script.upgrade_ops)
            names.leave_out(script.downgrade_ops)
        if autogenerate and script.upgrade_ops.is_empty():
            directives[:] = []
            logging.getLogger("alembic.env").info("No changes in schema detected.")
            return
        warnings = []
        for old, new in detect_renames(script, answers):
            table, _, column = old.rpartition(".")
            lost = f"every {column} value" if table else f"every row of {old}"
            warnings.append(
                f"{old} is dropped and {new} created: {lost} is lost. If it is a rename, "
                f"run again with -x rename={old}:{new.rpartition('.')[2]}")
        warnings += data_loss_warnings(script, context.connection)
        if context.connection.dialect.name == "postgresql":
            from . import zero_downtime  # `db migrate --plain`: plain operations

            if not getattr(context.config, "attributes", {}).get("safe_migrate.plain"):
                warnings += zero_downtime.rewrite(script, context)
            warnings += [f"lock hazard: {line}" for line in lock_hazards(
                zero_downtime.unguarded(each_op(script.upgrade_ops)),
                lambda table: count_rows(context.connection, table))]
        for warning in warnings:
            print(f"WARNING: {warning}", file=sys.stderr)

    return process_revision_directives


COLUMN_CHANGES = {"modify_type": "type", "modify_nullable": "nullable",
                  "modify_default": "default", "modify_comment": "comment"}


def describe_difference(diff) -> list[str]:
    """Lines for an entry of alembic.autogenerate.compare_metadata(): one per difference,
    every changed property of a column included."""
    if isinstance(diff, list):  # changes to one column, one entry per property
        return [f"column {table}.{column}: {COLUMN_CHANGES.get(kind, kind)} {in_db} in the "
                f"database, {in_models} in the models"
                for kind, _, table, column, _, in_db, in_models in diff]
    kind, *details = diff
    where, _, thing = kind.partition("_")
    obj = details[-1]
    name = getattr(obj, "name", obj)
    if thing == "column":
        name = f"{details[1]}.{obj.name}"
    place = "in the models, not in the database" if where == "add" else (
        "in the database, not in the models")
    return [f"{thing} {name}: {place}"]
