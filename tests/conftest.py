"""Fixtures: a fresh copy of the project per test, run through its CLI as a user runs it,
against a real SQLite file or a real PostgreSQL server that the test session starts."""
import glob
import hashlib
import os
import pty
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
ROWS = 1000
# What each column of the tutorial's tables holds in row i, whichever revision is applied.
SAMPLE_VALUES = {
    "company": {"cid": lambda i: i, "cname": lambda i: f"company {i}",
                "clocation": lambda i: f"city {i % 37}"},
    "employee": {"id": lambda i: i, "name": lambda i: f"employee {i}",
                 "email": lambda i: f"e{i}@example.com", "age": lambda i: 20 + i % 45},
}
PG_PASSWORD = "migrate-secret"


def pytest_configure(config):
    config.addinivalue_line("markers", "postgresql: needs a PostgreSQL server (initdb)")
    config.addinivalue_line("markers", "mariadb: needs a MariaDB server (mariadb-server)")


class Project:
    """A copy of migrate_example.py, the safe_migrate package (and usually migrations/) in a
    temp folder, driven through one of the two CLIs."""

    def __init__(self, path, database_url=None, cli="manager"):
        self.path = path
        self.module = path / "migrate_example.py"
        self.database_url = database_url or f"sqlite:///{path / 'data.db'}"
        self.cli = cli
        # As users run it: with Python's bytecode cache (some sandboxes switch it off).
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "FLASK_APP", "PYTHONDONTWRITEBYTECODE")}
        if database_url:
            self.env["DATABASE_URL"] = database_url

    def db_argv(self, *args):
        """`python migrate_example.py db ARGS` (Flask-Script), or `flask db ARGS` with
        FLASK_APP=migrate_example.py (Flask's CLI)."""
        if self.cli == "flask":
            return [sys.executable, "-m", "flask", "db", *args]
        return [sys.executable, self.module, "db", *args]

    def db(self, *args, **kwargs):
        """Run a db command through this project's CLI; return (exit code, stdout+stderr)."""
        env = {"FLASK_APP": "migrate_example.py", **kwargs.pop("env", {})}
        return self.run(*self.db_argv(*args), env=env, **kwargs)

    def run(self, *argv, cwd=None, env=None, timeout=120, stderr=subprocess.STDOUT):
        """Run a command in the project folder; return (exit code, output). Output is stdout
        and stderr together, or stdout alone when stderr=subprocess.DEVNULL."""
        proc = subprocess.run(
            [str(a) for a in argv],
            check=False,
            cwd=cwd or self.path,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=timeout,
        )
        return proc.returncode, proc.stdout

    def db_started(self, *args):
        """Start a db command and return its Popen, stdout and stderr piped apart (for a
        signal sent while it runs)."""
        return subprocess.Popen([str(a) for a in self.db_argv(*args)], cwd=self.path,
                                env={**self.env, "FLASK_APP": "migrate_example.py"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def db_on_terminal(self, args, answer):
        """Run a db command on a pseudo-terminal and answer its first [y/N] question;
        return (exit code, everything the terminal showed)."""
        controller, terminal = pty.openpty()
        proc = subprocess.Popen([str(a) for a in self.db_argv(*args)], cwd=self.path,
                                env={**self.env, "FLASK_APP": "migrate_example.py"},
                                stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        seen = b""
        while b"[y/N]" not in seen:
            # A question that never comes fails the test instead of hanging it.
            assert select.select([controller], [], [], 60)[0], seen.decode()
            chunk = os.read(controller, 1024)
            assert chunk, seen.decode()
            seen += chunk
        os.write(controller, answer.encode() + b"\n")
        while True:
            try:
                chunk = os.read(controller, 1024)
            except OSError:  # EIO: the process has ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        os.close(controller)
        return proc.wait(timeout=60), seen.decode()

    def edit_module(self, old, new):
        """Change the models the way a user edits migrate_example.py."""
        text = self.module.read_text()
        assert old in text, old
        self.module.write_text(text.replace(old, new, 1))

    def engine(self):
        return sa.create_engine(self.database_url)

    def inspector(self):
        return sa.inspect(self.engine())

    def columns(self, table):
        return [c["name"] for c in self.inspector().get_columns(table)]

    def tables(self):
        return set(self.inspector().get_table_names())

    def query(self, sql, **params):
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    def execute(self, sql, rows=None):
        engine = self.engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql), rows or {})
        finally:
            engine.dispose()

    def schema(self):
        """Everything about the tables that a migration can change, comparable with ==."""
        inspector = self.inspector()
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table),
                "unique": sorted((u["name"], u["column_names"])
                                 for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], i["column_names"], i["unique"])
                                  for i in inspector.get_indexes(table)),
                "foreign_keys": sorted((f["name"], f["constrained_columns"], f["referred_table"])
                                       for f in inspector.get_foreign_keys(table)),
            }
            for table in sorted(inspector.get_table_names())
        }

    def populate(self, rows=ROWS):
        """Fill the tutorial's tables, in whatever shape the applied revision gave them."""
        for table, values in SAMPLE_VALUES.items():
            if table not in self.tables():
                continue
            names = [c for c in self.columns(table) if c in values]
            self.execute(
                f"INSERT INTO {table} ({', '.join(names)}) "
                f"VALUES ({', '.join(':' + c for c in names)})",
                [{c: values[c](i) for c in names} for i in range(1, rows + 1)],
            )

    def state(self):
        """Schema, every row of every table, and the revision."""
        tables = sorted(self.tables())
        return {
            "schema": self.schema(),
            "rows": {t: self.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables},
            "version": self.version(),
        }

    def version(self):
        if "alembic_version" not in self.tables():
            return None
        rows = self.query("SELECT version_num FROM alembic_version")
        return rows[0][0] if rows else None

    def add_revision(self, rev_id, body, down_revision=None):
        """Write a revision file by hand, on top of the current head."""
        down_revision = down_revision or self.revisions()[-1]
        path = self.path / "migrations" / "versions" / f"{rev_id}_test.py"
        path.write_text(f"import time\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
                        f"revision = {rev_id!r}\ndown_revision = {down_revision!r}\n"
                        f"branch_labels = None\ndepends_on = None\n\n" + textwrap.dedent(body))
        return path

    def revisions(self):
        """Revision ids of migrations/versions, base first."""
        script_dir = self.path / "migrations"
        from alembic.script import ScriptDirectory

        scripts = ScriptDirectory(str(script_dir))
        return [s.revision for s in reversed(list(scripts.walk_revisions()))]


def file_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_project(dest, with_migrations=True):
    dest.mkdir()
    shutil.copy(ROOT / "migrate_example.py", dest)
    shutil.copytree(ROOT / "safe_migrate", dest / "safe_migrate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if with_migrations:
        shutil.copytree(
            ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


# --- PostgreSQL: a throwaway cluster for the whole session ------------------------------


def find_pg_bin():
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/N/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir, workdir):
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = free_port()
        # initdb and postgres refuse to run as root: run them as the postgres user.
        self.user = "postgres" if os.geteuid() == 0 else None

    def pg(self, tool, *args):
        subprocess.run(
            [str(self.bindir / tool), *map(str, args)],
            check=True,
            user=self.user,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def start(self):
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(PG_PASSWORD)
        if self.user:
            shutil.chown(self.workdir, self.user)
            shutil.chown(pwfile, self.user)
        self.pg("initdb", "-D", self.datadir, "-U", "postgres", f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c fsync=off"
        self.pg("pg_ctl", "-D", self.datadir, "-o", options, "-l", self.workdir / "log",
                "-w", "start")

    def stop(self):
        self.pg("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")

    def url(self, dbname="postgres", password=PG_PASSWORD):
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql):
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg_server():
    bindir = find_pg_bin()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install -y postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="migrate-pg-")))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def new_pg_database(pg_server):
    """Make fresh, empty databases on the session's server; return their URLs."""
    names = []

    def create():
        names.append("t_" + uuid.uuid4().hex[:12])
        pg_server.admin(f"CREATE DATABASE {names[-1]}")
        return pg_server.url(names[-1])

    yield create
    for name in names:
        pg_server.admin(f"DROP DATABASE {name} WITH (FORCE)")


# Debian puts mariadbd in /usr/sbin, which a non-root PATH may lack.
MARIADB_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])


class MariaDBServer:
    """A throwaway MariaDB server (Debian's mariadb-server) on a temp socket and a free
    127.0.0.1 port, like PostgresServer: fast and unsafe settings, one test user."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.socket = workdir / "sock"
        self.port = free_port()
        self.process = None
        self.user = pwd.getpwuid(os.geteuid()).pw_name

    def start(self):
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                        f"--user={self.user}", "--auth-root-authentication-method=socket",
                        "--skip-test-db"],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.process = subprocess.Popen(
            [shutil.which("mariadbd", path=MARIADB_PATH), "--no-defaults", f"--datadir={self.datadir}",
             f"--user={self.user}", f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--log-error={self.workdir / 'log'}", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # mariadb-admin --wait retries the connection until the server answers.
        self.client("mariadb-admin", "--wait=60", "ping")
        self.client("mariadb", "-e",
                    f"CREATE USER 'migrate'@'127.0.0.1' IDENTIFIED BY '{PG_PASSWORD}';"
                    " GRANT ALL ON *.* TO 'migrate'@'127.0.0.1' WITH GRANT OPTION;")

    def client(self, tool, *args):
        subprocess.run([tool, "--no-defaults", f"--socket={self.socket}", "-uroot", *args],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self):
        self.process.kill()
        self.process.wait()

    def url(self, dbname="mysql", password=PG_PASSWORD):
        return f"mysql+pymysql://migrate:{password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql):
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def mariadb_server():
    if shutil.which("mariadbd", path=MARIADB_PATH) is None:
        message = "MariaDB server not found (apt-get install -y mariadb-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = MariaDBServer(Path(tempfile.mkdtemp(prefix="migrate-mariadb-")))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def new_mariadb_database(mariadb_server):
    """Make fresh, empty databases on the session's MariaDB server; return their URLs."""
    names = []

    def create():
        names.append("t_" + uuid.uuid4().hex[:12])
        mariadb_server.admin(f"CREATE DATABASE {names[-1]}")
        return mariadb_server.url(names[-1])

    yield create
    for name in names:
        mariadb_server.admin(f"DROP DATABASE IF EXISTS {name}")


# --- the fixtures tests use -------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def backend(request):
    return request.param


@pytest.fixture
def database_url(backend, request):
    """None for SQLite (the module's default data.db), else a fresh PostgreSQL database."""
    if backend == "postgresql":
        return request.getfixturevalue("new_pg_database")()
    return None


@pytest.fixture(params=["manager"])
def cli(request):
    """Which CLI runs `db` commands: Flask-Script's Manager here; a test module that states
    a guarantee of both CLIs overrides this fixture with params=CLIS."""
    return request.param


# Both CLIs, unless TEST_CLIS names fewer (noxfile.py: the newer Pythons' session runs the
# Manager alone, the 3.11 session both).
CLIS = os.environ.get("TEST_CLIS", "manager,flask").split(",")


@pytest.fixture
def make_project(tmp_path, cli):
    """Copy the project into tmp_path/NAME: the module, the package, and the committed
    migrations unless with_migrations=False (the tutorial's empty folder)."""

    def make(name="project", database_url=None, with_migrations=True):
        return Project(copy_project(tmp_path / name, with_migrations), database_url, cli)

    return make


@pytest.fixture
def project(make_project, database_url):
    """A fresh copy of the project (module and committed migrations) on either backend."""
    return make_project(database_url=database_url)


@pytest.fixture
def sqlite_project(make_project):
    """A fresh copy of the project on its default SQLite file."""
    return make_project()


@pytest.fixture
def empty_project(make_project, database_url):
    """migrate_example.py alone in an empty folder, as a user starting the tutorial has it."""
    return make_project("tutorial", database_url, with_migrations=False)
