"""The ``rotator`` command: parsing, calling flow/ and printing (``worker.cli.main``)."""

from worker.cli.main import main, run, serve_metrics

__all__ = ["main", "run", "serve_metrics"]
