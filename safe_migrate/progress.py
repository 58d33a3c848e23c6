"""What a long migration shows while it works, on a terminal only.

While a revision runs longer than MIGRATE_PROGRESS_AFTER seconds (default 2), a line on
stderr shows its elapsed time, updated in place with a carriage return by a background thread
and cleared when the revision ends; during a SQLite table copy it adds the table and the rows
copied so far. The rows are counted by the copy itself: its INSERT ... SELECT gets a WHERE
on a function of ours that counts each row and is always true (SQLAlchemy's construct, not
its SQL text), because SQLite tells nobody how many rows a running statement has written
(its change counters move when the statement ends). When stderr is not a terminal (piped
output, CI logs) nothing here runs: no line, no thread, the copy as Alembic built it.

The revision's own lines (its start, its time) are the runner's; this module only owns the
line that changes in place.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import TextIO

import sqlalchemy as sa

from .settings import seconds

AFTER = "MIGRATE_PROGRESS_AFTER"
COUNTING_FUNCTION = "safe_migrate_row_copied"


def human_size(size: int) -> str:
    """97 MB, 12 kB, 512 bytes: a file's size as a person says it."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.0f} {unit}"
    return f"{size} bytes"


def on_a_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Ticker:
    """The line that shows a running revision's elapsed time (and a table copy's rows)."""

    def __init__(self, stream: TextIO, after: float) -> None:
        self.stream = stream
        self.after = after
        self.start = time.monotonic()
        self.table: str | None = None  # the table a SQLite copy is copying, if one is
        self.rows = 0
        self.shown = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.tick, name="safe_migrate progress",
                                       daemon=True)

    def row_copied(self) -> int:
        """The copy's counting function: one more row; always true."""
        self.rows += 1
        return 1

    def line(self) -> str:
        text = f"  ... {time.monotonic() - self.start:.1f} s elapsed"
        if self.table is not None:
            text += f", copying {self.table}: {self.rows:,} rows"
        return text

    def tick(self) -> None:
        if self.stopped.wait(self.after):
            return
        while True:
            self.stream.write(f"\r{self.line()}\x1b[K")
            self.stream.flush()
            self.shown = True
            if self.stopped.wait(min(0.5, max(self.after, 0.05))):
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


_active: Ticker | None = None  # the ticker of the revision running now, when one shows


@contextmanager
def ticking():
    """Show the progress line while the block runs, when stderr is a terminal."""
    global _active
    if not on_a_terminal(sys.stderr):
        yield
        return
    ticker = Ticker(sys.stderr, seconds(AFTER, 2.0))
    ticker.thread.start()
    _active = ticker
    try:
        yield
    finally:
        _active = None
        ticker.stop()


def counted_copy(construct, table: str, dbapi_connection):
    """A SQLite table copy's INSERT ... SELECT, counting its rows for the progress line:
    the same statement with `WHERE safe_migrate_row_copied()`, which is always true. Unchanged
    when no progress line shows (not a terminal)."""
    ticker = _active
    if ticker is None or getattr(construct, "select", None) is None:
        return construct
    dbapi_connection.create_function(COUNTING_FUNCTION, 0, ticker.row_copied)
    ticker.table, ticker.rows = table, 0
    construct.select = construct.select.where(getattr(sa.func, COUNTING_FUNCTION)())
    return construct


def copy_done() -> None:
    """The table copy has ended: the progress line shows the elapsed time alone again."""
    if _active is not None:
        _active.table = None


def write_now(text: str) -> None:
    """Print a line and flush it at once, so a terminal (or a log read while the command
    runs) has it before the long work it announces."""
    print(text, flush=True)

