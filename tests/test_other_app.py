"""Another app adopts the package as the README says: `pip install` into a fresh virtualenv,
its own models and manage.py, and the same guarantees through both CLIs."""
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest
from conftest import CLIS, ROOT

MANAGE_PY = '''
import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from safe_migrate import Migrate, MigrateCommand, metadata

try:
    from flask_script import Manager
except ImportError:  # Flask 2.2 and later (the modern profile): flask-script-ng
    from flask_script_ng import Manager

HERE = os.path.dirname(os.path.abspath(__file__))
app = Flask(__name__, instance_path=os.path.join(HERE, "instance"), static_folder=None)
app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(HERE, "shop.db")
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
db = SQLAlchemy(app, metadata=metadata())
migrate = Migrate(app, db)
manager = Manager(app)
manager.add_command("db", MigrateCommand)


class Customer(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)


class Order(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    customer_id = db.Column(db.Integer, db.ForeignKey("customer.id", ondelete="CASCADE"),
                            nullable=False)
    total = db.Column(db.Integer, nullable=False)


if __name__ == "__main__":
    manager.run()
'''

COPY_CUSTOMERS = '''
"""copy customer"""
import sqlalchemy as sa
from alembic import op

revision = "copy0001"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("customer", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("email", sa.String(120)))


def downgrade():
    with op.batch_alter_table("customer", recreate="always") as batch_op:
        batch_op.drop_column("email")
'''


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtualenv with the pinned stack and this package, installed with pip."""
    where = tmp_path_factory.mktemp("adopt")
    source = where / "source"
    source.mkdir()
    # The profile this test runs on: its pins (the legacy ones, or requirements-modern.txt).
    pins = "requirements.txt" if version("flask").startswith("1.") else "requirements-modern.txt"
    for name in ("pyproject.toml", "README.md", pins):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "safe_migrate", source / "safe_migrate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", where / "venv"], check=True)
    pip = subprocess.run([where / "venv" / "bin" / "pip", "install", "-q",
                          "-r", source / pins, source],
                         capture_output=True, text=True, check=False)
    assert pip.returncode == 0, pip.stderr
    return where / "venv" / "bin"


@pytest.fixture(params=CLIS)
def shop(venv, tmp_path, request):
    """The other app in its own folder; run(*args) runs `db ARGS` through one CLI."""
    (tmp_path / "manage.py").write_text(MANAGE_PY)

    def run(*args):
        argv = ([venv / "python", "manage.py", "db", *args] if request.param == "manager"
                else [venv / "flask", "db", *args])
        proc = subprocess.run([str(a) for a in argv], cwd=tmp_path, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, check=False,
                              env={"PATH": f"{venv}:/usr/bin:/bin", "FLASK_APP": "manage.py"})
        return proc.returncode, proc.stdout + proc.stderr

    run.path = tmp_path
    return run


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_another_app_gets_every_guarantee(shop):
    assert shop("init")[0] == 0
    assert "run_migrations()" in (shop.path / "migrations" / "env.py").read_text()
    code, output = shop("migrate", "-m", "initial")
    assert code == 0, output
    assert shop("upgrade")[0] == 0
    database = shop.path / "shop.db"
    with sqlite3.connect(database) as conn:
        conn.executemany("INSERT INTO customer (id, name) VALUES (?, ?)",
                         [(i, f"c{i}") for i in range(1, 101)])
        conn.executemany('INSERT INTO "order" (id, customer_id, total) VALUES (?, ?, ?)',
                         [(i, i, i * 10) for i in range(1, 101)])
    head = rows(database, "SELECT version_num FROM alembic_version")[0][0]
    versions = shop.path / "migrations" / "versions"
    (versions / "copy0001_copy_customer.py").write_text(
        textwrap.dedent(COPY_CUSTOMERS.format(down=head)))

    # A batch copy of the parent keeps every ON DELETE CASCADE child, up and down.
    code, output = shop("upgrade")
    assert code == 0, output
    assert rows(database, 'SELECT count(*) FROM "order"') == [(100,)]
    assert re.search(r"Snapshot of shop\.db \(\d+\.\d\d s\) saved to ", output), output
    assert len(list((shop.path / "backups").glob("shop.*.db"))) == 1
    code, output = shop("downgrade")
    assert code == 0, output
    assert rows(database, 'SELECT count(*) FROM "order"') == [(100,)]

    # Downgrading to base without a terminal asks for -x yes, and changes nothing.
    code, output = shop("downgrade", "base")
    assert code == 1
    assert output == ("Error: downgrade to base drops order (100 rows), customer (100 rows); "
                      "nothing changed. To go ahead, add -x yes\n")
    assert rows(database, "SELECT count(*) FROM customer") == [(100,)]

    # An applied revision edited afterwards is refused.
    initial = next(p for p in versions.glob("*.py") if not p.name.startswith("copy"))
    initial.write_text(initial.read_text() + "\n# edited\n")
    code, output = shop("upgrade")
    assert code == 1 and "changed after revision" in output, output
    assert shop("check")[0] == 1  # behind head: copy0001 is not applied
