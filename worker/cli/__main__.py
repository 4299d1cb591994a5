"""``python -m worker.cli``."""

from worker.cli import run

run()
