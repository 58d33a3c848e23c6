"""A bad database URL while the app's module is imported, said in one line. Flask-SQLAlchemy
3 makes the app's engine in `SQLAlchemy(app)`, during that import, before any command of this
package runs; SQLAlchemy's error would end the process with a traceback. `install()` (when the
package is imported) adds a `sys.excepthook` that says what the commands say of such a URL
(urls.py) instead, and leaves every other exception, and any with MIGRATE_TRACEBACK=1, to the
hook that was there before.
"""
from __future__ import annotations

import sys

from .errors import describe, show_tracebacks


def url_being_made(tb) -> object | None:
    """The URL Flask-SQLAlchemy was making an engine of when the exception was raised, as the
    app's config has it (Flask-SQLAlchemy may have added options to its copy); None if it was
    not making one. Read from its frames' locals: `app` and the bind `key` of init_app's loop,
    else the engine `options`."""
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
        if not frame.f_globals.get("__name__", "").startswith("flask_sqlalchemy"):
            continue
        local = frame.f_locals
        config = getattr(local.get("app"), "config", None)
        if config is not None and "key" in local:
            key = local["key"]
            url = config.get("SQLALCHEMY_DATABASE_URI") if key is None \
                else (config.get("SQLALCHEMY_BINDS") or {}).get(key)
            url = url.get("url") if isinstance(url, dict) else url
            if url is not None:
                return url
        options = local.get("options")
        if isinstance(options, dict) and "url" in options:
            return options["url"]
    return None


def install() -> None:
    """Put the one-line hook in front of the current sys.excepthook (in place of one an
    earlier import of the package put there)."""
    previous = getattr(sys.excepthook, "before_safe_migrate", sys.excepthook)

    def excepthook(kind, error, tb) -> None:
        url = url_being_made(tb) if isinstance(error, Exception) else None
        if url is None or show_tracebacks():
            return previous(kind, error, tb)
        from .errors import MigrationError
        from .urls import check_database_url

        try:
            check_database_url(url)
        except MigrationError as problem:
            print(f"Error: {problem}", file=sys.stderr)
        except Exception as problem:  # noqa: BLE001 -- a URL SQLAlchemy cannot even parse
            print(f"Error: {describe(problem)}", file=sys.stderr)
        else:
            print(f"Error: {describe(error)}", file=sys.stderr)

    excepthook.before_safe_migrate = previous
    sys.excepthook = excepthook
