"""Fixtures: a fresh copy of the project per test, run through its CLI as a user runs it,
against a real SQLite file or a real PostgreSQL server that the test session starts."""
import atexit
import compileall
import contextlib
import gc
import glob
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import logging
import os
import pty
import pwd
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
import warnings
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


# The modern profile (requirements-modern.txt): Flask 2.2 and later, with flask-script-ng.
MODERN = int(importlib.metadata.version("flask").split(".")[0]) >= 2


def known_modern_failures() -> dict[str, str]:
    """{test id: its cause} from tests/modern_known_failures.txt (a cause line, then its ids)."""
    known, cause = {}, ""
    for line in (ROOT / "tests" / "modern_known_failures.txt").read_text().splitlines():
        if line.startswith("# "):
            cause = line[2:]
        elif line.strip():
            known[line.strip()] = cause
    return known


def pytest_collection_modifyitems(config, items):
    """On the modern profile, the tests known not to hold there yet are strict xfails."""
    if not MODERN:
        return
    known = known_modern_failures()
    for item in items:
        if item.nodeid in known:
            item.add_marker(pytest.mark.xfail(reason=known[item.nodeid], strict=True))


# TEST_SUBPROCESS=1: every db command in a new interpreter, as a user runs it (noxfile.py's
# `subprocess` session); otherwise single db commands run in the test process (in_process).
SUBPROCESS_ONLY = os.environ.get("TEST_SUBPROCESS") == "1"
DEVNULL = subprocess.DEVNULL


def changes_interpreter_start(name):
    """Whether an environment variable acts when Python starts (PYTHONPATH, -W's
    PYTHONWARNINGS, the locale of stdio...): a command with it set needs a new interpreter."""
    return name.startswith(("PYTHON", "LC_")) or name in ("LANG", "LANGUAGE")


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

    def db(self, *args, env=None, cwd=None, timeout=120, stderr=subprocess.STDOUT,
           subprocess=False):
        """Run a db command through this project's CLI; return (exit code, stdout+stderr).

        In this test process (see in_process below) unless subprocess=True, TEST_SUBPROCESS=1,
        or env sets a variable Python reads at start-up (PYTHON*, locale): the output and exit
        code are the same, without the ~0.8 s of imports a new interpreter costs. A test that
        needs a real process (a signal, a kill, a second process at once, import-time
        behaviour, -W) passes subprocess=True. timeout applies to a subprocess only."""
        env = {"FLASK_APP": "migrate_example.py", **(env or {})}
        if subprocess or SUBPROCESS_ONLY or any(map(changes_interpreter_start, env)):
            return self.run(*self.db_argv(*args), cwd=cwd, env=env, timeout=timeout,
                            stderr=stderr)
        return in_process(self, args, {**self.env, **env}, Path(cwd or self.path),
                          keep_stderr=stderr is not DEVNULL)

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
        self.edit_file(self.module, old, new)

    @staticmethod
    def edit_file(path, old, new):
        """Change a Python file (the module, a revision) the way a user edits it."""
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
        # Python imports it through its bytecode cache, which checks the source's mtime in
        # whole seconds and its size: an edit within the second of the last command that keeps
        # the size (age -> years, String -> Text) would not be seen. A user's edit comes later
        # than that; drop the cache as if it had.
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            cached.unlink()

    def engine(self):
        # No pool: a helper's connection is closed when its block ends (SQLAlchemy 2 pools
        # SQLite files, which would keep them open, e.g. on a tmpfs a test unmounts).
        return sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)

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


# --- db commands in the test process ---------------------------------------------------
#
# Starting Python and importing Flask, SQLAlchemy and Alembic costs ~0.8 s per command, most
# of the suite's time. in_process runs the command the way the interpreter would -- the
# module as __main__ (Manager) or `python -m flask` (Flask's CLI), the project folder first
# on sys.path and as cwd, its environment, empty stdin, stdout and stderr into one buffer in
# order, the exit code from SystemExit or 1 and a traceback -- and then puts back what a
# command may change in a process: modules imported from the project copy, sys.path, cwd,
# environment, logging, warnings, signal handlers, tempfile's folder; its SQLAlchemy engines
# are disposed of (their pooled connections closed, as a process's exit closes them).

# The signals a command may install handlers for (an interrupted migration, a lock holder).
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE]
# A new interpreter's warning filters (Python 3.11-3.13, no -W, no PYTHONWARNINGS): pytest
# records warnings instead, which would hide the ones a user sees.
DEFAULT_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"),
                           ("ignore", DeprecationWarning, ""),
                           ("ignore", PendingDeprecationWarning, ""),
                           ("ignore", ImportWarning, ""),
                           ("ignore", ResourceWarning, "")]


def project_modules(project):
    """The modules a command imports from the project copy: the app and the package."""
    folder = str(project.path)
    return [name for name, module in list(sys.modules.items())
            if name == "migrate_example" or name == "safe_migrate"
            or name.startswith("safe_migrate.")
            or (getattr(module, "__file__", None) or "").startswith(folder + os.sep)]


def show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning as a new interpreter has it: to stderr (the captured buffer)."""
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def process_state_kept():
    """Put back logging, warnings, signals, env, cwd, sys.path/argv/stdio after a command."""
    manager = logging.Logger.manager
    loggers = {name: (logger.level, logger.disabled, logger.propagate, logger.handlers[:])
               for name, logger in manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    root = (logging.root.level, logging.root.handlers[:])
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    excepthook = sys.excepthook
    environ, cwd, path, argv = dict(os.environ), os.getcwd(), sys.path[:], sys.argv[:]
    stdio = sys.stdin, sys.stdout, sys.stderr
    tempdir, logging_disabled = tempfile.tempdir, manager.disable
    no_bytecode = sys.dont_write_bytecode
    try:
        with warnings.catch_warnings():
            yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = stdio
        sys.excepthook = excepthook
        sys.argv[:], sys.path[:] = argv, path
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        tempfile.tempdir = tempdir
        sys.dont_write_bytecode = no_bytecode
        for s, handler in handlers.items():
            signal.signal(s, handler)
        logging.root.setLevel(root[0])
        logging.root.handlers[:] = root[1]
        logging.disable(logging_disabled)
        for name, logger in list(manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            level, disabled, propagate, kept = loggers.get(name, (logging.NOTSET, False, True, []))
            logger.setLevel(level)
            logger.disabled, logger.propagate, logger.handlers[:] = disabled, propagate, kept


class CurrentStdout:
    """sys.stdout as it is when written to, for what bound sys.stdout once at import."""

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


def alembic_prints_to_current_stdout():
    """Alembic's Config(stdout=sys.stdout) binds the stdout of the moment Alembic is
    imported (a new process's own); here that is pytest's capture or an earlier command's
    buffer, so make the default follow sys.stdout. Once; idempotent."""
    from alembic.config import Config

    names = list(inspect.signature(Config.__init__).parameters)[1:]
    defaults = list(Config.__init__.__defaults__)
    index = names.index("stdout") - (len(names) - len(defaults))
    if not isinstance(defaults[index], CurrentStdout):
        defaults[index] = CurrentStdout()
        Config.__init__.__defaults__ = tuple(defaults)


def in_process(project, args, env, cwd, keep_stderr=True):
    """`db ARGS` through project's CLI in this process, from the folder cwd; (exit code,
    stdout+stderr text)."""
    alembic_prints_to_current_stdout()
    kept = {name: sys.modules.pop(name) for name in project_modules(project)}
    engines = []

    def connected(**kw):
        engines.append(kw["conn"].engine)

    output = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace",
                              newline="\n", write_through=True)
    sink = output if keep_stderr else io.StringIO()
    with process_state_kept():
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR afresh, as a new process does
        sys.dont_write_bytecode = False  # as Project.env has it: no PYTHONDONTWRITEBYTECODE
        # sys.path[0]: the script's folder (python migrate_example.py), or the current one
        # (python -m flask).
        sys.path.insert(0, str(cwd if project.cli == "flask" else project.module.parent))
        importlib.invalidate_caches()  # a module or revision the test just wrote is seen
        sys.stdin = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        sys.stdout, sys.stderr = output, sink
        warnings.resetwarnings()
        for action, category, module in reversed(DEFAULT_WARNING_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        warnings.showwarning = show_warning
        sa.event.listen(sa.engine.Engine, "engine_connect", connected, named=True)
        try:
            if project.cli == "flask":
                sys.argv = ["flask", "db", *map(str, args)]
                runpy.run_module("flask", run_name="__main__", alter_sys=True)
            else:
                sys.argv = [str(project.module), "db", *map(str, args)]
                runpy.run_path(str(project.module), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = exit_status(stop.code)
        except Exception as error:  # noqa: BLE001 -- printed as the interpreter prints it
            print_uncaught(error)
            code = 1
        finally:
            sa.event.remove(sa.engine.Engine, "engine_connect", connected)
            for engine in engines:
                engine.dispose()
            atexit.unregister(gc.freeze)  # safe_migrate/cli.py's, for a process's exit
            for name in project_modules(project):
                del sys.modules[name]
            sys.modules.update(kept)
    return code, output.buffer.getvalue().decode("utf-8", "backslashreplace")


def print_uncaught(error):
    """The traceback Python prints of an uncaught exception, from the command's own frames
    (not this file's, nor runpy's)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        tb = tb.tb_next
    sys.excepthook(type(error), error, tb)  # as the interpreter does (the package adds one)


def exit_status(code):
    """The process exit status sys.exit(code) gives: None 0, an int itself, else 1 after
    printing it to stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def sqlalchemy_parse_error(url):
    """SQLAlchemy's own words for a URL it cannot parse (1.4 quotes the string, 2.0 does not)."""
    try:
        sa.engine.make_url(url)
    except sa.exc.ArgumentError as error:
        return str(error)
    raise AssertionError(f"{url} parses")


def file_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compiled_package():
    """This test process's copy of safe_migrate/ with its bytecode cache, made once: each
    project copy starts with what a user's first command leaves (the .pyc files check the
    sources' times, which copying keeps), instead of compiling the package again."""
    global COMPILED_PACKAGE
    if COMPILED_PACKAGE is None:
        package = Path(tempfile.mkdtemp(prefix="safe-migrate-pyc-")) / "safe_migrate"
        atexit.register(shutil.rmtree, package.parent, ignore_errors=True)
        shutil.copytree(ROOT / "safe_migrate", package,
                        ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(package, quiet=1)
        COMPILED_PACKAGE = package
    return COMPILED_PACKAGE


COMPILED_PACKAGE = None


def copy_project(dest, with_migrations=True):
    dest.mkdir()
    shutil.copy(ROOT / "migrate_example.py", dest)
    shutil.copytree(compiled_package(), dest / "safe_migrate")
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


class ThrowawayServer:
    """What the test servers share: a statement run as their administrator."""

    def admin(self, sql):
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()


class PostgresServer(ThrowawayServer):
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


def running(server, missing):
    """Start a throwaway server for the session (a missing one fails the run under CI=true,
    else skips its tests), stop and remove it at the end."""
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    try:
        server.start()
    except BaseException:  # no half-started server left behind
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
        raise
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def fresh_databases(server, drop):
    """A function that makes a fresh, empty database on `server` and returns its URL; each is
    dropped (`drop`, with the name) when the test ends."""
    names = []

    def create():
        names.append("t_" + uuid.uuid4().hex[:12])
        server.admin(f"CREATE DATABASE {names[-1]}")
        return server.url(names[-1])

    yield create
    for name in names:
        server.admin(drop.format(name))


@pytest.fixture(scope="session")
def pg_server():
    bindir = find_pg_bin()
    server = bindir and PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="migrate-pg-")))
    yield from running(server, "PostgreSQL server binaries not found "
                               "(apt-get install -y postgresql)")


@pytest.fixture
def new_pg_database(pg_server):
    """Make fresh, empty databases on the session's server; return their URLs."""
    yield from fresh_databases(pg_server, "DROP DATABASE {} WITH (FORCE)")


# Debian puts mariadbd in /usr/sbin, which a non-root PATH may lack.
MARIADB_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])


class MariaDBServer(ThrowawayServer):
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
        # A temp folder of its own: servers bootstrapping side by side in /tmp (one per test
        # process) fail now and then on each other's temporary tables ("Unknown table
        # 'mysql.tmp_user_sys'", 3 of 18 measured; 0 of 18 with their own).
        tmpdir = self.workdir / "tmp"
        tmpdir.mkdir()
        self.client("mariadb-install-db", f"--datadir={self.datadir}", f"--tmpdir={tmpdir}",
                    f"--user={self.user}", "--auth-root-authentication-method=socket",
                    "--skip-test-db", socket=False)
        self.process = subprocess.Popen(
            [shutil.which("mariadbd", path=MARIADB_PATH), "--no-defaults", f"--datadir={self.datadir}",
             f"--tmpdir={tmpdir}",
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

    def client(self, tool, *args, socket=True):
        """Run one of MariaDB's tools as root on the socket; its output in the error if it
        fails."""
        argv = [tool, "--no-defaults", *([f"--socket={self.socket}", "-uroot"] if socket else []),
                *args]
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}")

    def stop(self):
        self.process.kill()
        self.process.wait()

    def url(self, dbname="mysql", password=PG_PASSWORD):
        return f"mysql+pymysql://migrate:{password}@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture(scope="session")
def mariadb_server():
    found = shutil.which("mariadbd", path=MARIADB_PATH)
    server = found and MariaDBServer(Path(tempfile.mkdtemp(prefix="migrate-mariadb-")))
    yield from running(server, "MariaDB server not found (apt-get install -y mariadb-server)")


@pytest.fixture
def new_mariadb_database(mariadb_server):
    """Make fresh, empty databases on the session's MariaDB server; return their URLs."""
    yield from fresh_databases(mariadb_server, "DROP DATABASE IF EXISTS {}")


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
