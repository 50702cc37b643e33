"""The ``rescue`` command line: the app (:mod:`.app`); ``main`` is the console script's entry point.

Run as ``python -m rescue_gpu.cli``. The run options both ``score`` commands share, the
consoles and the exit codes are in :mod:`rescue_gpu.cliutil`, below the assays' commands.
"""

from .app import app, main

__all__ = ["app", "main"]
