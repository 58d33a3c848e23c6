"""The Flask-Migrate tutorial's app: a Flask-Script manager with `db` migration commands.

    python migrate_example.py db init | migrate | upgrade | downgrade | ...
    FLASK_APP=migrate_example.py flask db ...

What makes the migrations safe lives in the safe_migrate package beside this file; see
README.md for where this module differs from the tutorial's, and why.
"""
import os
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from safe_migrate import Migrate, MigrateCommand, metadata

try:
    from flask_script import Manager
except ImportError:  # Flask 2.2 and later: flask-script-ng, the same Manager
    from flask_script_ng import Manager

# data.db and migrations/ live beside this file, whatever the current directory.
BASE_DIR = Path(__file__).resolve().parent

# An explicit instance folder and no static route: Flask 1.1 finds them through
# pkgutil.get_loader and ast.Str, which Python 3.14 removed (3.12 deprecates them).
app = Flask(__name__, instance_path=str(BASE_DIR / "instance"), static_folder=None)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
    "DATABASE_URL", f"sqlite:///{BASE_DIR / 'data.db'}")
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False

db = SQLAlchemy(app, metadata=metadata())
migrate = Migrate(app, db, directory=BASE_DIR / "migrations")

manager = Manager(app)
manager.add_command("db", MigrateCommand)


class Employee(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String, unique=True, nullable=False)
    age = db.Column(db.Integer, unique=False, nullable=True)


class Company(db.Model):
    cid = db.Column(db.Integer, primary_key=True)
    cname = db.Column(db.String, unique=True, nullable=False)
    clocation = db.Column(db.String, unique=False, nullable=False)


if __name__ == "__main__":
    manager.run()
