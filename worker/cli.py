"""The ``rotator`` command line: thin adapters over the core, the queue and the local stack."""

from __future__ import annotations

import os
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """databend-rotator: keep Databend external tables readable while credentials rotate."""


@main.command("databend-local")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the DSN printed says which).")
@click.option("--data-dir", default="", help="Where the engine keeps table data "
              "(default: a scratch directory removed at exit).")
@click.option("--user", envvar="DATABEND_LOCAL_USER", default=None,
              help="Require this user name (Basic auth). Env: DATABEND_LOCAL_USER.")
@click.option("--password", envvar="DATABEND_LOCAL_PASSWORD", default=None,
              help="Password for --user. Env: DATABEND_LOCAL_PASSWORD.")
@click.option("--pool-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Engine sessions, i.e. queries that run at the same time.")
def databend_local(host: str, port: int, data_dir: str, user: str | None,
                   password: str | None, pool_size: int) -> None:
    """Run the embedded Databend engine as a local Databend server (not for production data).

    Prints the DSN to use and serves until SIGINT/SIGTERM. The catalog (databases, tables,
    connections) lives only as long as this process.
    """
    from worker.databend_local import ServerConfig, serve

    if password and not user:
        raise click.UsageError("--password needs --user")
    config = ServerConfig(host=host, port=port, data_dir=data_dir, user=user,
                          password=password, pool_size=pool_size)

    def announce(dsn: str) -> None:
        click.echo(f"DSN: {dsn}")
        click.echo("databend-local is ready; stop it with Ctrl-C.", err=True)
        sys.stdout.flush()

    serve(config, on_ready=announce)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
