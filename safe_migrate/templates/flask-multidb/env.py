"""Alembic runs this file for every command that reads or changes the databases.

safe_migrate runs the migration of each database in turn: the app's default database (its
functions are named `upgrade_()`, `downgrade_()`) and then each of SQLALCHEMY_BINDS, each on
its own engine, under its own migration lock, checked and snapshotted first
(safe_migrate/multidb.py).
"""
from logging.config import fileConfig

from alembic import context

from safe_migrate import run_multidb_migrations

# Interpret the config file for Python logging.
fileConfig(context.config.config_file_name)

run_multidb_migrations()
