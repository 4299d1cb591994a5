"""The ``rotator`` command: parsing, calling flow/ and printing (``worker.cli.main``)."""

from worker.cli.main import follow_run, main, run, serve_metrics

__all__ = ["follow_run", "main", "run", "serve_metrics"]
