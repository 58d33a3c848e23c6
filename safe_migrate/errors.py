"""One line per error: what failed, where in a revision file, with passwords masked.

Both CLIs (Flask-Script's Manager and `flask db`) run every command inside `reported()`,
so a user sees `Error: ...` and a non-zero exit whatever went wrong.
`MIGRATE_TRACEBACK=1` shows the full traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path


class MigrationError(Exception):
    """A failure the user can act on: printed as one line, nothing else."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the run had done when it came (see runner.Progress)."""


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind an error, if one is: SQLAlchemy and Alembic's cleanup after an
    interrupted statement can raise errors of their own (PendingRollbackError), which must
    not hide it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# user:password@ in a URL, and in the strings SQLAlchemy fails to parse as one.
_PASSWORD_IN_URL = re.compile(r"(?P<user>[\w.%+-]+):(?P<password>[^@\s/'\"]+)@")


def mask_passwords(text: str) -> str:
    """Replace the password of every `user:password@host` in text with ***."""
    return _PASSWORD_IN_URL.sub(r"\g<user>:***@", text)


def is_revision_file(path: Path) -> bool:
    return path.parent.name == "versions" and (path.parent.parent / "env.py").exists()


def describe(exc: BaseException) -> str:
    """One line for an error: what failed, and where in a revision file if it was there."""
    if isinstance(exc, MigrationError):
        return mask_passwords(str(exc))
    if isinstance(exc, Interrupted):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}: {exc.msg}"
    orig = getattr(exc, "orig", None)
    if orig is not None and str(orig).strip():  # a DBAPI error: the driver's own words
        message = str(orig).strip().splitlines()[0]
    elif type(exc).__name__ == "ArgumentError" and "URL" in str(exc):
        message = f"DATABASE_URL is not a database URL ({exc})"
    elif type(exc).__name__ == "CommandError":
        message = str(exc)
    elif lengthless_varchar(exc):
        message = (f"{exc}: a String without a length, which MySQL cannot create; write "
                   "sa.String(n) in the revision and db.String(n) in the model")
    elif isinstance(exc, OSError) and exc.errno == 28:
        message = f"disk full: {exc.strerror} ({exc.filename or 'database'})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    message = " ".join(message.split()) or type(exc).__name__
    if "database or disk is full" in message:  # SQLite's words for a full disk
        message = f"disk full: {message}"
    if message.endswith("database is locked"):  # SQLite's busy timeout ran out
        message = ("another connection holds the database (an open transaction?); gave up "
                   "waiting after MIGRATE_LOCK_TIMEOUT, nothing of the revision in progress kept")
    frames = traceback.extract_tb(exc.__traceback__)
    in_revision = [f for f in frames if is_revision_file(Path(f.filename))]
    if in_revision:
        message = f"{in_revision[-1].filename}, line {in_revision[-1].lineno}: {message}"
    return mask_passwords(message)


def lengthless_varchar(exc: BaseException | None) -> bool:
    """SQLAlchemy's CompileError for a String() without a length on MySQL (mysql_strings.py),
    or one that carries it (a CREATE TABLE's names the table and column)."""
    while exc is not None:
        if type(exc).__name__ == "CompileError" and str(exc).startswith(
                "VARCHAR requires a length"):
            return True
        exc = exc.__cause__
    return False


def show_tracebacks() -> bool:
    return bool(os.environ.get("MIGRATE_TRACEBACK"))


@contextmanager
def reported():
    """Turn any error into `Error: ...` on stderr and exit 1 (130 for Ctrl-C)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if show_tracebacks():
            raise
        print(f"Error: {describe(exc)}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if show_tracebacks():
            raise
        interrupt = interrupt_in(exc)
        print(f"Error: {describe(interrupt or exc)}", file=sys.stderr)
        sys.exit(130 if interrupt else 1)
