"""Long-running commands: the Celery ``worker`` (and its metrics), and the local stack —
``databend-local``, ``demo``, ``up`` (the ``local`` extra)."""

from __future__ import annotations

import sys

import click

from worker.cli.common import EXIT_BAD_INPUT, plain_console, reports_errors
from worker.domain.errors import FatalError


@click.command()
@click.option(
    "--concurrency",
    "-c",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Tasks that run at once (threads).",
)
@click.option(
    "--beat/--no-beat",
    default=False,
    show_default=True,
    help="Also run the schedules: key rotation and retirement, the reaper, notifications "
    "(one worker only).",
)
@click.option(
    "--pool",
    default="threads",
    show_default=True,
    type=click.Choice(["threads", "prefork", "solo"]),
)
@click.option("--loglevel", default=None, help="Celery's log level (default: ROTATOR_LOG_LEVEL).")
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics (tables, runs, key ages, schedule) on --metrics-host:PORT.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on (0.0.0.0 for a scraper on another host).",
)
@reports_errors
def worker(
    concurrency: int,
    pool: str,
    loglevel: str | None,
    beat: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Start a Celery worker with the configuration from the environment."""
    if metrics_port is not None and pool == "prefork":
        raise click.UsageError("--metrics-port needs --pool threads or solo (one process)")
    from worker.runtime.celery_app import configure_app
    from worker.runtime.settings import settings

    current = settings().require("databend_dsn", "redis_url", "bindings_path")
    from worker.domain.bindings import load_bindings

    load_bindings(current.bindings_path or "")  # a bad bindings file fails here, at start
    app = configure_app(current)
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel or current.log_level}",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        "rotator",
    ]
    if beat:
        # The schedule is one sweep every ROTATOR_RETIRE_INTERVAL: nothing worth persisting, and a
        # shelve file in /tmp would be shared (and locked) by every worker on the machine.
        argv += ["--beat", "--scheduler=celery.beat:Scheduler"]
    if metrics_port is not None:
        serve_metrics(metrics_port, metrics_host)
        from worker.runtime.service_metrics import register_service_metrics

        register_service_metrics(current.redis_url or "")
    app.worker_main(argv)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Prometheus metrics of this process on HOST:PORT, in a background thread."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise FatalError(f"cannot serve metrics on {host}:{port}: {why}") from None


@click.command("databend-local")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port; the DSN printed says which).",
)
@click.option(
    "--data-dir",
    default="",
    help="Where the engine keeps table data (default: a scratch directory removed at exit).",
)
@click.option(
    "--user",
    envvar="DATABEND_LOCAL_USER",
    default=None,
    help="Require this user name (Basic auth). Env: DATABEND_LOCAL_USER.",
)
@click.option(
    "--password",
    envvar="DATABEND_LOCAL_PASSWORD",
    default=None,
    help="Password for --user. Env: DATABEND_LOCAL_PASSWORD.",
)
@click.option(
    "--pool-size",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Engine sessions, i.e. queries that run at the same time.",
)
@click.option(
    "--mask-format",
    type=click.Choice(["legacy", "current"]),
    default="legacy",
    show_default=True,
    help="How masked credentials look: legacy = the engine's (******XYZ, Databend <= 1.2.918); "
    "current = Databend >= 1.2.919's (AK***YZ), emulated, with version() reporting 1.2.919.",
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host header is NAME (repeatable). Others get 403.",
)
def databend_local(
    host: str,
    port: int,
    data_dir: str,
    user: str | None,
    password: str | None,
    pool_size: int,
    mask_format: str,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Run the embedded Databend engine as a local Databend server (not for production data).

    Prints the DSN to use and serves until SIGINT/SIGTERM. The catalog (databases, tables,
    connections) lives only as long as this process.
    """
    from worker.local.embedded import require_local_extra

    require_local_extra("databend-local", "databend", "pyarrow")
    from worker.local.databend_local import (
        MaskFormat,
        ServerConfig,
        StartError,
        exposure_warning,
        serve,
    )

    if password and not user:
        raise click.UsageError("--password needs --user")
    if not host.strip():  # (it would listen everywhere, and the DSN printed would name no host)
        raise click.BadParameter("name an address, e.g. 127.0.0.1 or 0.0.0.0", param_hint="--host")
    config = ServerConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        user=user,
        password=password,
        pool_size=pool_size,
        mask_format=MaskFormat(mask_format),
        allowed_hosts=tuple(h.strip().lower() for h in allowed_hosts if h.strip()),
    )
    warning = exposure_warning(config.host, config.user)
    if warning:
        click.echo(warning, err=True)
    try:
        serve(config, on_ready=_announce)
    except StartError as exc:  # the address or the data directory given: bad input
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _announce(dsn: str) -> None:
    """The DSN on stdout, flushed at once: whoever started databend-local waits for that line."""
    click.echo(f"DSN: {dsn}")
    click.echo("databend-local is ready; stop it with Ctrl-C.", err=True)
    sys.stdout.flush()


_MASK_FORMAT_OPTION = click.option(
    "--mask-format",
    type=click.Choice(["legacy", "current"]),
    default="legacy",
    show_default=True,
    help="How databend-local masks keys: the engine's ******XYZ or Databend >= 1.2.919's AK***YZ.",
)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the work directory (logs, bindings) afterwards.")
@_MASK_FORMAT_OPTION
@reports_errors
def demo(keep: bool, mask_format: str) -> None:
    """Run a whole rotation locally on embedded defaults and show every table still working.

    Starts databend-local, Valkey (unless REDIS_URL is set), moto server with IAM authentication
    enforced and one worker; seeds a secret, a bucket and external tables; rotates the key;
    deletes the old key; reads and writes every table. Needs no cloud account and no Docker.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from worker.local.embedded import require_local_extra

    require_local_extra("demo")
    from worker.cli.follow import follow_run
    from worker.local.demo import run_demo
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging("WARNING", current.log_format)
    work = Path(tempfile.mkdtemp(prefix="rotator-demo-"))
    console = plain_console()
    try:
        code = run_demo(
            console,
            redis_url=current.redis_url,
            work_dir=work,
            follow=follow_run,
            mask_format=mask_format,
        )
    finally:
        if keep or "code" not in locals() or code != 0:
            console.print(f"logs and bindings kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


@click.command()
@_MASK_FORMAT_OPTION
@reports_errors
def up(mask_format: str) -> None:
    """Start the local stack (as in ``demo``) and keep it running for hands-on use."""
    from pathlib import Path

    from worker.local.embedded import require_local_extra

    require_local_extra("up")
    from worker.local.demo import run_up
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging("WARNING", current.log_format)
    run_up(
        plain_console(),
        redis_url=current.redis_url,
        work_dir=Path(".rotator/up").resolve(),
        mask_format=mask_format,
    )


def register(main: click.Group) -> None:
    main.add_command(worker)
    main.add_command(databend_local)
    main.add_command(demo)
    main.add_command(up)
