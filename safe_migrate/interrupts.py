"""The Ctrl-C that Python would lose.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT comes. When that is
inside a garbage collector's callback or a `__del__` (SQLAlchemy's weakref callbacks run
during a table copy), it cannot raise it: it prints "Exception ignored in ..." and carries
on, and the revision would commit as if nobody had pressed Ctrl-C. While `held()` is entered,
such an interrupt is held instead of printed (through `sys.unraisablehook`, Python's own
place for it); `raise_held()` raises it at the next safe point, a revision about to commit
(runner.Run.after_revision), and leaving `held()` raises it if no safe point came.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_held: list[KeyboardInterrupt] = []  # the process's one hook: the process's one list


@contextmanager
def held() -> Iterator[None]:
    """Hold the interrupts Python cannot raise until `raise_held()` or the end."""
    if getattr(sys.unraisablehook, "safe_migrate_holds", False):  # a run inside a run
        yield
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _held.append(unraisable.exc_value)
        else:
            previous(unraisable)

    hook.safe_migrate_holds = True
    sys.unraisablehook = hook
    try:
        yield
        raise_held()
    finally:
        sys.unraisablehook = previous
        _held.clear()


def raise_held() -> None:
    """Raise the interrupt Python could not, if one came."""
    if _held:
        _held.clear()
        raise KeyboardInterrupt
