"""Alembic runs this file for every command that reads or changes the database.

safe_migrate runs the migration: on the app's own engine, under the migration lock, with
each revision in its own transaction, checked and snapshotted first (safe_migrate/runner.py).
"""
from logging.config import fileConfig

from alembic import context

from safe_migrate import run_migrations

# Interpret the config file for Python logging.
fileConfig(context.config.config_file_name)

run_migrations()
