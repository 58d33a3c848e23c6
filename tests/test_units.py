"""Fast in-process tests of the package's pure parts: no CLI, no database file."""
import importlib.util
import sqlite3
import sys

import pytest
import sqlalchemy as sa
from alembic.operations import ops

from safe_migrate import autogenerate, errors, settings
from safe_migrate.cli import COMMANDS, DbCommand, click_param
from safe_migrate.errors import MigrationError, describe, mask_passwords
from safe_migrate.lock_hazards import hazards, lock_hazards

# --- -x options and renames ---------------------------------------------------------------


def test_rename_answers_read_columns_and_tables():
    answers = autogenerate.rename_answers(
        ["rename=company.clocation:location", "backup=off", "rename=company:firm"])
    assert answers == {"company.clocation": "company.location", "company": "firm"}


def test_a_confirmed_column_rename_replaces_the_drop_and_the_add():
    table_ops = ops.ModifyTableOps("company", [
        ops.DropColumnOp.from_column_and_tablename(
            None, "company", sa.Column("clocation", sa.String(), nullable=False)),
        ops.AddColumnOp("company", sa.Column("location", sa.String(), nullable=False)),
    ])
    unanswered = []
    renames = autogenerate.column_renames(
        table_ops, {"company.clocation": "company.location"}, unanswered)
    assert [(r.column_name, r.modify_name) for r in renames] == [("clocation", "location")]
    assert table_ops.ops == [] and unanswered == []


def test_an_unanswered_rename_is_left_as_drop_and_add(monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    drop = ops.DropColumnOp.from_column_and_tablename(None, "t", sa.Column("a", sa.Integer()))
    add = ops.AddColumnOp("t", sa.Column("b", sa.Integer()))
    table_ops = ops.ModifyTableOps("t", [drop, add])
    unanswered = []
    assert autogenerate.column_renames(table_ops, {}, unanswered) == []
    assert unanswered == [("t.a", "t.b")] and table_ops.ops == [drop, add]


def test_columns_of_different_kinds_are_no_rename():
    drop = ops.DropColumnOp.from_column_and_tablename(None, "t", sa.Column("a", sa.Integer()))
    add = ops.AddColumnOp("t", sa.Column("b", sa.String()))
    unanswered = []
    assert autogenerate.column_renames(ops.ModifyTableOps("t", [drop, add]),
                                       {"t.a": "t.b"}, unanswered) == []


# --- data-loss warnings -------------------------------------------------------------------


@pytest.mark.parametrize("old, new, narrows", [
    (sa.String(100), sa.String(50), True),
    (sa.String(50), sa.String(100), False),
    (sa.String(), sa.String(10), True),
    (sa.Integer(), sa.String(), True),
    (sa.Integer(), sa.Integer(), False),
])
def test_narrowing_type_changes(old, new, narrows):
    assert autogenerate.narrows(old, new) is narrows


def test_not_null_without_default_is_found():
    assert autogenerate.adds_not_null_without_default(
        ops.AddColumnOp("t", sa.Column("a", sa.Integer(), nullable=False)))
    assert not autogenerate.adds_not_null_without_default(
        ops.AddColumnOp("t", sa.Column("a", sa.Integer(), nullable=False, server_default="0")))
    assert not autogenerate.adds_not_null_without_default(
        ops.AddColumnOp("t", sa.Column("a", sa.Integer(), nullable=True)))


# --- db check's lines ---------------------------------------------------------------------


def test_every_difference_of_a_column_is_a_line():
    diff = [("modify_type", None, "company", "cname", {}, sa.Integer(), sa.String()),
            ("modify_nullable", None, "company", "cname", {}, True, False)]
    assert autogenerate.describe_difference(diff) == [
        "column company.cname: type INTEGER in the database, VARCHAR in the models",
        "column company.cname: nullable True in the database, False in the models",
    ]


def test_added_and_removed_things_are_lines():
    table = sa.Table("firm", sa.MetaData(), sa.Column("id", sa.Integer))
    assert autogenerate.describe_difference(("add_table", table)) == [
        "table firm: in the models, not in the database"]
    assert autogenerate.describe_difference(
        ("remove_column", None, "company", sa.Column("clocation", sa.String()))) == [
        "column company.clocation: in the database, not in the models"]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "postgresql://user:secret@host/x",
    "Could not parse SQLAlchemy URL from string 'postgresql//user:secret@host/x'",
    "connection to postgres://app:s3cr%40t@127.0.0.1 failed",
])
def test_passwords_are_masked(text):
    masked = mask_passwords(text)
    assert "secret" not in masked and "s3cr" not in masked and ":***@" in masked


def test_an_error_is_one_line():
    assert describe(ValueError("first\n  second")) == "ValueError: first second"
    assert describe(MigrationError("as said")) == "as said"
    assert describe(KeyboardInterrupt()) == "interrupted"


def test_a_disk_full_error_says_so():
    assert describe(OSError(28, "No space left on device")).startswith("disk full:")


def test_an_error_in_a_revision_names_its_file_and_line(tmp_path):
    (tmp_path / "env.py").write_text("")
    versions = tmp_path / "versions"
    versions.mkdir()
    revision = versions / "abc_x.py"
    revision.write_text("def upgrade():\n    raise RuntimeError('boom')\n")
    spec = importlib.util.spec_from_file_location("abc_x", revision)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(RuntimeError) as raised:
        module.upgrade()
    assert describe(raised.value) == f"{revision}, line 2: RuntimeError: boom"


def test_reported_prints_one_line_and_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("MIGRATE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_, errors.reported():
        raise MigrationError("nothing changed")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "Error: nothing changed\n"


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-1", ""])
def test_a_timeout_must_be_finite_and_not_negative(monkeypatch, value):
    monkeypatch.setenv("MIGRATE_LOCK_TIMEOUT", value)
    with pytest.raises(MigrationError, match="MIGRATE_LOCK_TIMEOUT must be a number of seconds"):
        settings.seconds("MIGRATE_LOCK_TIMEOUT", 60)


@pytest.mark.parametrize("value", ["-1", "2.5", "many", ""])
def test_a_retry_count_must_be_a_whole_number(monkeypatch, value):
    monkeypatch.setenv("MIGRATE_PG_LOCK_RETRIES", value)
    with pytest.raises(MigrationError, match="MIGRATE_PG_LOCK_RETRIES must be a whole number"):
        settings.count("MIGRATE_PG_LOCK_RETRIES", 5)


def test_a_retry_count(monkeypatch):
    monkeypatch.setenv("MIGRATE_PG_LOCK_RETRIES", "3")
    assert settings.count("MIGRATE_PG_LOCK_RETRIES", 5) == 3


def test_a_timeout_defaults(monkeypatch):
    monkeypatch.delenv("MIGRATE_LOCK_TIMEOUT", raising=False)
    assert settings.seconds("MIGRATE_LOCK_TIMEOUT", 60) == 60


# --- both CLIs are built from one description ---------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_both_clis_take_the_same_options(name):
    func, options = COMMANDS[name]
    argparse_dests = {o.kwargs.get("dest", o.args[0]) for o in DbCommand(func, options).option_list}
    click_names = {click_param(o).name for o in options}
    assert argparse_dests == click_names
    assert set(argparse_dests) <= set(func.__code__.co_varnames[:func.__code__.co_argcount])


def test_sqlites_full_disk_error_says_disk_full():
    assert describe(sqlite3.OperationalError("database or disk is full")) == (
        "disk full: OperationalError: database or disk is full")


# --- lock hazards of a PostgreSQL revision ------------------------------------------------


def test_a_foreign_key_without_not_valid_is_a_lock_hazard():
    plain = ops.CreateForeignKeyOp("fk_a_b", "a", "b", ["b_id"], ["id"])
    not_valid = ops.CreateForeignKeyOp("fk_a_b", "a", "b", ["b_id"], ["id"],
                                       postgresql_not_valid=True)
    assert "postgresql_not_valid=True" in hazards(plain, 10)[0]
    assert hazards(not_valid, 10) == []
    assert lock_hazards([plain], lambda table: 0) == []  # an empty table locks nobody for long
