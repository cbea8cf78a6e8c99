"""The operator console: a read-only JSON API and dashboard over PostgreSQL (issue 18)."""

from learnops.console.app import create_console

__all__ = ["create_console"]
