"""The one patch this package makes, because Flask-Script 2.0.6 is abandoned upstream.

Flask-Script introspects `@manager.command` functions with `inspect.getargspec()`, which
Python 3.11 removed. Python's documentation names `getfullargspec()` as its replacement;
its first four fields are getargspec()'s (args, varargs, varkw, defaults). Put back only
where it is missing.
"""
import inspect

if not hasattr(inspect, "getargspec"):
    inspect.getargspec = lambda func: inspect.getfullargspec(func)[:4]
