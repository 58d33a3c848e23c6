"""Test sessions: the whole suite on Python 3.13 (the newest) with coverage across the CLI
subprocesses, through both CLIs; the SQLite half on 3.11 (a fresh machine's Python), through the
Manager. `nox` runs those two, each with one test process per core (pytest-xdist); CI's time
allows no more on 2 cores. `nox -s sqlite-3.12` runs the SQLite half on 3.12, `nox -s tests` one. `nox -s modern-3.13` runs the
whole suite on the modern profile (requirements-modern.txt); it is not in the default run."""
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "sqlite-3.11"]
nox.options.error_on_missing_interpreters = True

# This machine's other Pythons are pyenv builds, not on PATH: put them after the default one.
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
os.environ["PATH"] = os.pathsep.join(
    [os.environ["PATH"], *map(str, sorted(PYENV_VERSIONS.glob("3.1[123].*/bin")))])
ROOT = Path(__file__).resolve().parent
# One test process per core (pytest-xdist); each starts its own PostgreSQL server.
XDIST = ["-n", "auto", "--dist", "worksteal", "--durations=15"]


def install(session):
    session.install("-q", "-r", "requirements.txt", "-r", "tests/requirements.txt")


@nox.session(python="3.13")
def tests(session):
    """Every test, on SQLite and PostgreSQL, with coverage of the package. Coverage runs on
    sys.monitoring (3.12+): about +15% CPU in the CLI subprocesses, against +60-80% for its
    trace function."""
    install(session)
    session.env["COVERAGE_FILE"] = str(ROOT / ".coverage")
    session.env["COVERAGE_CORE"] = "sysmon"
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *XDIST, *session.posargs)
    session.run("coverage", "combine", "-q")
    session.run("coverage", "report")


@nox.session(python=["3.11", "3.12"])
def sqlite(session):
    """The SQLite tests on the older Pythons, through the Manager (the 3.13 session runs
    every test through both CLIs)."""
    install(session)
    session.env["TEST_CLIS"] = "manager"
    session.run("python", "-m", "pytest", *XDIST, "-m", "not postgresql", *session.posargs)


@nox.session(python=["3.11", "3.13"])
def modern(session):
    """Every test on the modern profile (Flask 3, flask-script-ng, Flask-SQLAlchemy 3,
    SQLAlchemy 2, Alembic 1.20), through both CLIs."""
    session.install("-q", "-r", "requirements-modern.txt", "-r", "tests/requirements.txt")
    session.run("python", "-m", "pytest", *XDIST, *session.posargs)
