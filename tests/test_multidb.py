"""`db init --multidb`: an app with SQLALCHEMY_BINDS, one history for its databases, each
database run with every guarantee of a single one (its lock, snapshot, checksums, downgrade
questions, rehearsal), and a failure that says what each database committed."""
import re
import sqlite3
import textwrap

import pytest
from conftest import CLIS, file_hash

from safe_migrate import guards
from safe_migrate.locks import WaitBudget, file_lock
from safe_migrate.multidb import what_committed

MULTIDB_APP = '''
import os
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from safe_migrate import Migrate, MigrateCommand, metadata

try:
    from flask_script import Manager
except ImportError:  # Flask 2.2 and later (the modern profile): flask-script-ng
    from flask_script_ng import Manager

HERE = Path(__file__).resolve().parent
app = Flask(__name__, instance_path=str(HERE / "instance"), static_folder=None)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL",
                                                       f"sqlite:///{HERE / 'shop.db'}")
app.config["SQLALCHEMY_BINDS"] = {"users": os.environ.get("USERS_URL",
                                                          f"sqlite:///{HERE / 'users.db'}")}
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
db = SQLAlchemy(app, metadata=metadata())
migrate = Migrate(app, db, directory=HERE / "migrations")
manager = Manager(app)
manager.add_command("db", MigrateCommand)


class Product(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)


class Account(db.Model):
    __bind_key__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(120), nullable=False, unique=True)


if __name__ == "__main__":
    manager.run()
'''

# A second revision, by hand: a table in each database, and a row added through the app's
# models in the users database (on the run's connection to it); upgrade_users() may fail.
SECOND = '''
"""badges"""
import sqlalchemy as sa
from alembic import op

revision = "b2"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade(engine_name):
    globals()["upgrade_%s" % engine_name]()


def downgrade(engine_name):
    globals()["downgrade_%s" % engine_name]()


def upgrade_():
    op.create_table("note", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_():
    op.drop_table("note")


def upgrade_users():
    from migrate_example import Account, db

    op.create_table("badge", sa.Column("id", sa.Integer, primary_key=True))
    db.session.add(Account(email="added by a revision"))
    db.session.commit()  # joins the revision's transaction
    assert Account.query.filter_by(email="added by a revision").count() == 1
    {fail}


def downgrade_users():
    op.drop_table("badge")
    account = sa.table("account", sa.column("email"))
    op.execute(account.delete().where(account.c.email == "added by a revision"))
'''


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def multidb_project(make_project, database_url=None):
    """The app above, `db init --multidb` and `db migrate` done: one revision, not applied."""
    project = make_project("multi", database_url, with_migrations=False)
    project.module.write_text(MULTIDB_APP)
    code, output = project.db("init", "--multidb")
    assert code == 0, output
    code, output = project.db("migrate", "-m", "initial")
    assert code == 0, output
    return project


@pytest.fixture
def shop(make_project):
    return multidb_project(make_project)


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def tables(path):
    return {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}


def add_second(project, fail=False):
    [first] = project.revisions()
    path = project.path / "migrations" / "versions" / "b2_badges.py"
    path.write_text(textwrap.dedent(SECOND).format(
        down=first, fail='op.execute("INSERT INTO no_such_table VALUES (1)")' if fail else ""))
    return first


def test_each_database_gets_its_tables_version_checksums_and_snapshot(shop):
    shop_db, users_db = shop.path / "shop.db", shop.path / "users.db"
    [first] = shop.revisions()
    source = (shop.path / "migrations" / "versions").glob("*initial.py")
    text = next(source).read_text()
    assert "def upgrade_users():" in text and "def downgrade_():" in text

    code, output = shop.db("upgrade")

    assert code == 0, output
    assert {"product", "alembic_version", "migration_checksums"} <= tables(shop_db)
    assert "account" not in tables(shop_db)
    assert {"account", "alembic_version", "migration_checksums"} <= tables(users_db)
    assert "product" not in tables(users_db)
    for database in (shop_db, users_db):
        assert rows(database, "SELECT version_num FROM alembic_version") == [(first,)]
        assert rows(database, "SELECT revision FROM migration_checksums") == [(first,)]
    assert shop.db("check") == (0, "The models, the migrations' head and each database agree.\n")
    with sqlite3.connect(users_db) as conn:
        conn.execute("INSERT INTO account (email) VALUES ('a@example.com')")
    add_second(shop)

    code, output = shop.db("upgrade")

    assert code == 0, output
    for database in (shop_db, users_db):
        assert rows(database, "SELECT version_num FROM alembic_version") == [("b2",)]
        assert f"Snapshot of {database.name} (" in output and " saved to " in output
        [snapshot] = (shop.path / "backups").glob(f"{database.name}.*.db")
        assert rows(snapshot, "SELECT version_num FROM alembic_version") == [(first,)]
    assert "note" in tables(shop_db) and "badge" in tables(users_db)
    assert rows(users_db, "SELECT email FROM account ORDER BY id") == [
        ("a@example.com",), ("added by a revision",)]

    # An applied revision edited afterwards is refused, in whichever database recorded it.
    second = shop.path / "migrations" / "versions" / "b2_badges.py"
    second.write_text(second.read_text() + "\n# edited\n")
    code, output = shop.db("downgrade", "-x", "yes")
    assert code == 1 and "b2_badges.py changed after revision b2 was applied" in output, output
    assert "Databases now: the default database: unchanged at b2; bind 'users': not run" in output
    code, output = shop.db("repair")
    assert code == 0 and "Bind 'users': recorded the checksums of 2 applied" in output, output
    code, output = shop.db("downgrade", "-x", "yes")
    assert code == 0, output
    for database in (shop_db, users_db):
        assert rows(database, "SELECT version_num FROM alembic_version") == [(first,)]
    code, output = shop.db("check")
    assert code == 1
    assert "bind 'users': database at " + first in output, output


def test_check_of_each_database_keeps_the_app_options_and_names(shop):
    """`db check` compares each database as the single-database check does: with the app's
    include_object, and saying when the models' constraints have no names."""
    users_db = shop.path / "users.db"
    assert shop.db("upgrade")[0] == 0
    with sqlite3.connect(users_db) as conn:
        conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY)")
    code, output = shop.db("check")
    assert code == 1 and "bind 'users': " in output and "audit" in output, output
    shop.edit_module("migrate = Migrate(app, db, directory=HERE / \"migrations\")",
                     "migrate = Migrate(app, db, directory=HERE / \"migrations\",\n"
                     "                  include_object=lambda o, name, *a: name != \"audit\")")
    assert shop.db("check") == (0, "The models, the migrations' head and each database agree.\n")

    shop.edit_module("db = SQLAlchemy(app, metadata=metadata())", "db = SQLAlchemy(app)")
    code, output = shop.db("check")
    assert code == 1, output
    lines = output.splitlines()
    assert lines[0].startswith("the default database: naming convention: "), output
    assert any(line.startswith("bind 'users': naming convention: ") for line in lines), output
    assert "agree" not in output


def test_downgrade_asks_about_each_database_rows_before_any_changes(shop):
    shop_db, users_db = shop.path / "shop.db", shop.path / "users.db"
    add_second(shop)
    assert shop.db("upgrade")[0] == 0
    with sqlite3.connect(users_db) as conn:
        conn.executemany("INSERT INTO badge (id) VALUES (?)", [(1,), (2,), (3,)])
    first = shop.revisions()[0]

    code, output = shop.db("downgrade")

    # The default database's downgrade drops an empty table; the users one would drop
    # badge's rows: it asks, before either database changes.
    assert code == 1
    assert output.splitlines()[-1] == (
        "Error: bind 'users': this downgrade drops badge (3 rows); nothing changed. To go "
        "ahead, add -x yes (no database changed)")
    for database in (shop_db, users_db):
        assert rows(database, "SELECT version_num FROM alembic_version") == [("b2",)]
    assert rows(users_db, "SELECT count(*) FROM badge") == [(3,)]

    code, output = shop.db_on_terminal(["downgrade"], "y")

    assert code == 0, output
    assert output.count("[y/N]") == 1 and "this downgrade drops badge (3 rows)" in output
    for database in (shop_db, users_db):
        assert rows(database, "SELECT version_num FROM alembic_version") == [(first,)]
    assert "badge" not in tables(users_db) and "note" not in tables(shop_db)


def test_a_failure_in_the_second_database_says_which_committed(shop):
    shop_db, users_db = shop.path / "shop.db", shop.path / "users.db"
    [initial] = shop.revisions()
    # Each database has its own migration lock: another run holding users.db's stops this one
    # there, after the default database committed.
    with file_lock(users_db, WaitBudget(5)):
        code, output = shop.db("upgrade", env={"MIGRATE_LOCK_TIMEOUT": "0.5"})
    assert code == 1
    assert output.splitlines()[-1].startswith(
        f"Error: bind 'users': another migration of {users_db} is running (pid "), output
    assert output.endswith(
        "Databases now: the default database: committed base -> " + initial
        + "; bind 'users': unchanged at base\n"), output
    assert not users_db.exists()  # the run that would have created it left nothing behind
    assert shop.db("upgrade")[0] == 0
    first = add_second(shop, fail=True)
    before = file_hash(shop_db), file_hash(users_db)

    code, output = shop.db("upgrade", "--rehearse")

    assert code == 1
    assert "A rehearsal: no database was changed" in output, output
    assert (file_hash(shop_db), file_hash(users_db)) == before

    code, output = shop.db("upgrade")

    assert code == 1
    last = output.splitlines()[-1]
    assert re.fullmatch(
        r"Error: bind 'users': \S+b2_badges.py, line \d+: no such table: no_such_table\. "
        rf"Databases now: the default database: committed {first} -> b2; bind 'users': "
        rf"unchanged at {first}", last), last
    assert rows(shop_db, "SELECT version_num FROM alembic_version") == [("b2",)]
    assert rows(users_db, "SELECT version_num FROM alembic_version") == [(first,)]
    assert "badge" not in tables(users_db)  # the failed revision was rolled back


def test_rehearse_runs_each_database_on_its_copy(shop):
    shop_db, users_db = shop.path / "shop.db", shop.path / "users.db"
    assert shop.db("upgrade")[0] == 0
    # No database changed: autogenerate writes no revision.
    code, output = shop.db("migrate", "-m", "nothing")
    assert code == 0 and output.count("No changes in schema detected.") == 1, output
    assert len(shop.revisions()) == 1
    add_second(shop)
    before = file_hash(shop_db), file_hash(users_db)

    code, output = shop.db("upgrade", "--rehearse")

    assert code == 0, output
    assert output.count("Running upgrade") == 2, output
    assert f"Rehearsal done: {shop_db} was not changed" in output
    assert f"Rehearsal done: {users_db} was not changed" in output
    assert (file_hash(shop_db), file_hash(users_db)) == before
    assert not (shop.path / "backups").exists()

    code, output = shop.db("upgrade", "--round-trip")

    assert code == 0, output
    assert output.count("Running downgrade b2 -> ") == 2, output  # one per database
    assert "every row of every database is as the first upgrade left it" in output
    assert (file_hash(shop_db), file_hash(users_db)) == before


@pytest.mark.postgresql
@pytest.mark.parametrize("cli", ["manager"])
def test_a_postgresql_and_a_sqlite_database(make_project, new_pg_database):
    url = new_pg_database()
    project = multidb_project(make_project, url)
    users_db = project.path / "users.db"
    first = project.revisions()[0]

    code, output = project.db("upgrade")

    assert code == 0, output
    assert project.version() == first and "product" in project.tables()
    assert "account" not in project.tables()
    assert rows(users_db, "SELECT version_num FROM alembic_version") == [(first,)]
    assert "account" in tables(users_db)
    add_second(project)
    before = file_hash(users_db)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    assert "Rehearsal done: rolled back, the database was not changed" in output
    assert file_hash(users_db) == before
    assert project.version() == first and "note" not in project.tables()

    code, output = project.db("upgrade")

    assert code == 0, output
    assert project.version() == "b2" and "note" in project.tables()
    assert rows(users_db, "SELECT version_num FROM alembic_version") == [("b2",)]
    assert len(list((project.path / "backups").glob("users.db.*.db"))) == 1
    code, output = project.db("downgrade", first, "-x", "yes")
    assert code == 0, output
    assert project.version() == first and "badge" not in tables(users_db)


# --- fast, in-process ---------------------------------------------------------------------


def test_what_committed_names_each_database():
    names = ["", "users", "logs"]
    line = what_committed(names, {"": "base", "users": "base"}, {"": "a1", "users": "base"})
    assert line == ("Databases now: the default database: committed base -> a1; bind 'users': "
                    "unchanged at base; bind 'logs': not run")


def test_the_downgrade_question_reads_the_database_own_function(tmp_path):
    revision = tmp_path / "r.py"
    revision.write_text(textwrap.dedent(SECOND).format(down="a1", fail=""))

    class Step:
        class revision:
            path = str(revision)

    assert list(guards.tables_dropped_by([Step])) == []
    assert list(guards.tables_dropped_by([Step], "downgrade_")) == [(None, "note")]
    assert list(guards.tables_dropped_by([Step], "downgrade_users")) == [(None, "badge")]


def test_init_multidb_needs_binds(tmp_path):
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from safe_migrate import Migrate, MigrationError
    from safe_migrate.commands import init

    app = Flask(__name__, instance_path=str(tmp_path), static_folder=None)  # as on 3.14
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'one.db'}"
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    Migrate(app, SQLAlchemy(app), directory=tmp_path / "migrations")
    with app.app_context(), pytest.raises(MigrationError, match="needs SQLALCHEMY_BINDS"):
        init(multidb=True)
    assert not (tmp_path / "migrations").exists()
