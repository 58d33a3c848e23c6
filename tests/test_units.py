"""Fast in-process tests of the package's pure parts: no CLI, no database file."""
import dataclasses
import importlib.util
import sqlite3
import sys

import pytest
import sqlalchemy as sa
from alembic.operations import ops
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from safe_migrate import autogenerate, errors, settings
from safe_migrate.cli import COMMANDS, DbCommand, click_param
from safe_migrate.errors import MigrationError, describe, mask_passwords
from safe_migrate.lock_hazards import hazards, lock_hazards
from safe_migrate.options import COMMAND_KEYS, KEYS, RunOptions, run_options
from safe_migrate.urls import check_database_url

# --- -x options and renames ---------------------------------------------------------------


def test_rename_answers_read_columns_and_tables():
    options = run_options(["rename=company.clocation:location", "rename=company:firm"], "migrate")
    assert dict(options.renames) == {"company.clocation": "company.location", "company": "firm"}


@pytest.mark.parametrize("command, x_arg, expected", [
    ("upgrade", ["backup=off", "lose=firm", "lose=company"],
     RunOptions(backup=False, lose=frozenset({"firm", "company"}))),
    ("downgrade", ["yes", "backup=off"], RunOptions(yes=True, backup=False)),
    ("restore", ("yes", "foreign"), RunOptions(yes=True, foreign=True)),  # click gives a tuple
    ("migrate", ["names=convention"], RunOptions(names_convention=True)),
    ("revision", None, RunOptions()),  # argparse gives None
    ("upgrade", (), RunOptions(backup=True, yes=False, lose=frozenset())),
])
def test_each_command_reads_its_own_keys(command, x_arg, expected):
    assert run_options(x_arg, command) == expected


def test_run_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        run_options(["yes"], "downgrade").yes = False


@pytest.mark.parametrize("command, x_arg, message", [
    ("upgrade", ["yse"], "unknown -x option 'yse' for upgrade; known: backup=off, lose=TABLE"),
    ("upgrade", ["backup=of"],
     "invalid -x option 'backup=of' for upgrade; known: backup=off, lose=TABLE"),
    ("upgrade", ["yes"], ("unknown -x option 'yes' for upgrade (downgrade, restore take it); "
                         "known: backup=off, lose=TABLE")),
    ("restore", ["backup=off"], ("unknown -x option 'backup' for restore (upgrade, downgrade "
                                "take it); known: yes, foreign")),
    ("migrate", ["foreign"], ("unknown -x option 'foreign' for migrate (restore takes it); "
                             "known: rename=TABLE.OLD:NEW, names=convention")),
    ("downgrade", ["lose="], ("invalid -x option 'lose=' for downgrade; "
                             "known: yes, backup=off, lose=TABLE")),
    (None, ["zz"], ("unknown -x option 'zz'; known: backup=off, foreign, lose=TABLE, "
                   "names=convention, rename=TABLE.OLD:NEW, yes")),
])
def test_a_wrong_option_is_one_line_naming_the_known_keys(command, x_arg, message):
    with pytest.raises(MigrationError) as caught:
        run_options(x_arg, command)
    assert str(caught.value) == message


@pytest.mark.parametrize("command, item", [
    ("upgrade", "backup"), ("upgrade", "backup=on"), ("upgrade", "backup="),
    ("upgrade", "lose"), ("upgrade", "lose= "), ("downgrade", "yes=1"),
    ("restore", "foreign=x"), ("migrate", "names"), ("migrate", "names=yes"),
    ("migrate", "rename"), ("migrate", "rename=company"), ("migrate", "rename=:firm"),
    ("migrate", "rename=company:"), ("migrate", "rename=company.:location"),
    ("migrate", "rename=.clocation:location"), ("revision", "rename=a.b:a.c"),
])
def test_a_malformed_value_is_refused(command, item):
    with pytest.raises(MigrationError, match=f"^invalid -x option '{item}' for {command}; "):
        run_options([item], command)


def test_a_run_started_another_way_takes_every_key():
    """The runner reads Alembic's -x for any command (None): a typo is still refused."""
    every = ["yes", "foreign", "backup=off", "lose=t", "rename=a.b:c", "names=convention"]
    assert run_options(every) == RunOptions(
        yes=True, foreign=True, backup=False, lose=frozenset({"t"}), renames=(("a.b", "a.c"),),
        names_convention=True)


@hypothesis_settings(derandomize=True, max_examples=300, deadline=None)
@given(command=st.sampled_from([None, *COMMAND_KEYS]),
       x_arg=st.lists(st.one_of(st.sampled_from(
           ["yes", "foreign", "backup=off", "lose=t", "rename=a.b:c", "names=convention",
            "backup", "lose=", "rename=a"]), st.text(max_size=12)), max_size=4))
def test_any_x_arg_is_read_or_refused_in_one_line(command, x_arg):
    """Whatever is given, the parser returns options or one line naming the known keys.
    (More examples locally: raise max_examples.)"""
    try:
        options = run_options(x_arg, command)
    except MigrationError as exc:
        message = str(exc)
        assert "\n" not in message  # items are shown with repr(): one line whatever they hold
        assert "; known: " in message and (command is None or f" for {command}" in message)
        return
    assert isinstance(options, RunOptions)
    keys = {item.partition("=")[0] for item in x_arg}
    allowed = set(KEYS) if command is None else set(COMMAND_KEYS[command])
    assert keys <= allowed
    assert options.yes == ("yes" in x_arg) and options.backup == ("backup=off" not in x_arg)


@pytest.mark.parametrize("command", sorted(COMMAND_KEYS))
def test_each_command_x_help_names_only_its_keys(command):
    help_text = next(o.help for o in COMMANDS[command][1] if o.dest == "x_arg")
    for key, spec in KEYS.items():
        assert (spec.form in help_text) == (key in COMMAND_KEYS[command]), (key, help_text)


def test_every_command_takes_x_and_each_key_belongs_to_a_command():
    with_x = {name for name, (_, options) in COMMANDS.items()
              if any(o.dest == "x_arg" for o in options)}
    assert with_x == set(COMMANDS)  # Flask-Migrate 4: -x on every command
    assert set(COMMAND_KEYS) <= with_x


# --- database URLs --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:///data.db", "sqlite://", "postgresql://u:secret@h/x",
                                 "postgresql+psycopg2://u@h:5433/x?sslmode=require"])
def test_a_url_sqlalchemy_can_use_is_returned_parsed(url):
    assert check_database_url(url) == sa.engine.make_url(url)
    assert check_database_url(sa.engine.make_url(url)) == sa.engine.make_url(url)


@pytest.mark.parametrize("url, missing, message", [
    ("postgres://u:secret@h/x", None,
     "postgres://u:***@h/x: use postgresql:// (SQLAlchemy 1.4 dropped the postgres name)"),
    ("mysql://u:secret@127.0.0.1/x", "MySQLdb",
     ("mysql://u:***@127.0.0.1/x: the mysqldb driver's module MySQLdb is not installed: pip "
     "install PyMySQL and use mysql+pymysql://, or pip install mysqlclient")),
    ("mysql+pymysql://u:secret@h/x", "pymysql",
     ("mysql+pymysql://u:***@h/x: the pymysql driver's module pymysql is not installed: pip "
     "install PyMySQL")),
    ("postgresql://u:secret@h/x", "psycopg2",
     ("postgresql://u:***@h/x: the psycopg2 driver's module psycopg2 is not installed: pip "
     "install psycopg2-binary")),
    ("postgresql+asyncpg://u:secret@h/x", None,
     ("postgresql+asyncpg://u:***@h/x: asyncpg is an async driver, which migrations cannot run "
     "on here: use postgresql:// (psycopg2)")),
    ("sqlite+aiosqlite:///data.db", None,
     ("sqlite+aiosqlite:///data.db: aiosqlite is an async driver, which migrations cannot run "
     "on here: use sqlite:// (pysqlite)")),
    ("mysql+nodriver://u:secret@h/x", None,
     "mysql+nodriver://u:***@h/x: SQLAlchemy has no driver 'nodriver' for mysql"),
    ("nodb://u:secret@h/x", None, "nodb://u:***@h/x: SQLAlchemy knows no database 'nodb'"),
])
def test_a_url_that_cannot_run_is_one_line(monkeypatch, url, missing, message):
    if missing:  # the driver's module as if not installed, whatever this machine has
        monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MigrationError) as caught:
        check_database_url(url)
    assert str(caught.value) == f"database URL {message}"
    assert describe(caught.value) == f"database URL {message}"


def test_a_string_that_is_no_url_is_one_line_without_its_password():
    with pytest.raises(MigrationError) as caught:
        check_database_url("u:secret@localhost")
    assert "secret" not in str(caught.value)
    assert str(caught.value).startswith("DATABASE_URL is not a database URL (")


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
