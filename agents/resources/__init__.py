"""Package data: the default topic catalogue and learning configuration.

``topics.yaml`` and ``learning.yaml`` here are the real files; the repository's
top-level ``topics.yaml`` and ``config/learning.yaml`` are symlinks to them, so
the copy a checkout shows and the copy a wheel ships are one file. Read them
with :func:`agents.settings.packaged` (``importlib.resources``), never by a path
relative to the source tree.
"""
