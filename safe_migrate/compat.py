"""What differs between the two stacks the package runs on, in one place: the legacy one of
requirements.txt (Flask 1.1, Flask-Script 2.0.6, Flask-SQLAlchemy 2.5, SQLAlchemy 1.4) and the
modern one of requirements-modern.txt (Flask 3, flask-script-ng, Flask-SQLAlchemy 3,
SQLAlchemy 2). Each name here has one meaning on both; the rest of the package uses these.

Flask-Script 2.0.6, abandoned upstream, introspects `@manager.command` functions with
`inspect.getargspec()`, which Python 3.11 removed. Python's documentation names
`getfullargspec()` as its replacement; its first four fields are getargspec()'s (args,
varargs, varkw, defaults). Put back only where it is missing.
"""
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

if not hasattr(inspect, "getargspec"):
    inspect.getargspec = lambda func: inspect.getfullargspec(func)[:4]

# Flask-Script's Manager, Command, Option and Group: Flask-Script itself (it needs Flask 1.x),
# or flask-script-ng, its fork for Flask 2.2 and later with the same public API.
try:
    import flask_script
except ImportError:
    import flask_script_ng as flask_script

__all__ = ["default_engine_is", "flask_script"]


@contextmanager
def default_engine_is(db, connection, bind: str | None = None) -> Iterator[None]:
    """Flask-SQLAlchemy 3's session takes its engine from `db.engines` (the app's, by bind
    key), not from the session's configured binds as 2.5's does (runner.app_session_on):
    within the block the engine of `bind` (None: the default one) is the run's connection.
    Other binds keep theirs."""
    engines = getattr(db, "engines", None)
    if engines is None or getattr(db, "session", None) is None:
        yield
        return
    saved = engines.get(bind)
    db.session.remove()
    engines[bind] = connection
    try:
        yield
    finally:
        db.session.remove()
        engines[bind] = saved
