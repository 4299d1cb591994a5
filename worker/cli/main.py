"""The ``rotator`` command line: thin adapters over the core, the queue and the local stack."""

from __future__ import annotations

import sys

import click

from worker.cli import intake, keys, migrate, objects, runs, serve, service
from worker.cli.serve import serve_metrics

__all__ = ["main", "run", "serve_metrics"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """databend-rotator: keep Databend external tables readable while credentials rotate."""


# One module per command group registers its commands on this one group.
for group in (runs, keys, migrate, intake, serve, service):
    group.register(main)
for command in objects.COMMANDS:
    main.add_command(command)


def run() -> None:
    """The ``rotator`` command. It ends with ``os._exit`` once its exit handlers have run (the
    audit spool drained, logs flushed): the Databend driver keeps native threads, and a Python
    thread still inside it when the interpreter finalizes aborts the process (SIGABRT,
    "exception not rethrown") instead of exiting with the command's own code."""
    import atexit
    import os

    code: int = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # not one of ours (reports_errors handles those): show it, fail
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
