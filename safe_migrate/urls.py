"""The database URL checked before anything connects: one line saying what to change or
install, instead of SQLAlchemy's traceback from deep inside create_engine.

SQLAlchemy is the oracle: it says whether it knows the URL's dialect and driver, whether the
driver is async, and which module the driver imports (its dialect's DBAPI import); only the
pip package to suggest for a missing module comes from a table here.
"""
from __future__ import annotations

import sqlalchemy as sa

from .errors import MigrationError, mask_passwords

# The pip package that provides a DBAPI module, where its name is not the module's.
PACKAGES = {"MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL"}
# What else serves the same database, where mysqlclient's C build is often the obstacle.
ALTERNATIVES = {"MySQLdb": "pip install PyMySQL and use mysql+pymysql://, or "}


def check_database_url(url: str | sa.engine.URL) -> sa.engine.URL:
    """The URL, parsed, if SQLAlchemy knows its dialect and the driver's module is installed
    and not async; else MigrationError with one line, the password masked."""
    try:
        url = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise MigrationError(mask_passwords(f"DATABASE_URL is not a database URL ({exc})")) \
            from None
    shown = f"database URL {url.render_as_string(hide_password=True)}"
    backend = url.get_backend_name()
    try:
        dialect = url.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise MigrationError(f"{shown}: {unknown_dialect(url)}") from None
    if getattr(dialect, "is_async", False):
        default = url.set(drivername=backend).get_dialect().driver
        raise MigrationError(
            f"{shown}: {dialect.driver} is an async driver, which migrations cannot run on "
            f"here: use {backend}:// ({default})")
    import_dbapi = getattr(dialect, "import_dbapi", None) or dialect.dbapi  # 2.0 / 1.4
    try:
        import_dbapi()
    except ImportError as exc:
        raise MigrationError(f"{shown}: {missing_driver(dialect.driver, exc)}") from None
    return url


def unknown_dialect(url: sa.engine.URL) -> str:
    """Why SQLAlchemy cannot load the URL's dialect: the backend or only the driver."""
    backend = url.get_backend_name()
    if backend == "postgres":
        return "use postgresql:// (SQLAlchemy 1.4 dropped the postgres name)"
    if url.drivername != backend:  # backend+driver: is it the driver SQLAlchemy lacks?
        try:
            url.set(drivername=backend).get_dialect()
        except sa.exc.NoSuchModuleError:
            pass
        else:
            return f"SQLAlchemy has no driver {url.get_driver_name()!r} for {backend}"
    return f"SQLAlchemy knows no database {backend!r}"


def missing_driver(driver: str, exc: ImportError) -> str:
    """What to install when the driver's module does not import."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return f"the {driver} driver does not import: {' '.join(str(exc).split())}"
    module = exc.name.partition(".")[0]
    package = PACKAGES.get(module, module)
    return (f"the {driver} driver's module {module} is not installed: "
            f"{ALTERNATIVES.get(module, '')}pip install {package}")
