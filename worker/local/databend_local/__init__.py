"""databend-local: the embedded Databend engine served over Databend's HTTP query protocol."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from worker.local.databend_local.guards import exposure_warning
from worker.local.databend_local.masking import MaskFormat
from worker.local.databend_local.server import DatabendLocalServer, ServerConfig

__all__ = ["MaskFormat", "ServerConfig", "StartError", "exposure_warning", "serve"]


class StartError(RuntimeError):
    """The server cannot start: its data directory cannot be used or its address bound."""


def serve(config: ServerConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Start the server and block until SIGINT/SIGTERM; ``on_ready`` gets the DSN to print."""
    from worker.local.databend_local.engine import EnginePool

    with tempfile.TemporaryDirectory(prefix="databend-local-") as scratch:
        data_dir = config.data_dir or scratch
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartError(f"cannot use --data-dir {data_dir}: {exc.strerror or exc}") from None
        pool = EnginePool(data_dir, config.pool_size)
        try:
            server = DatabendLocalServer(config, pool)
        except OSError as exc:
            raise StartError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
            ) from None
        stop = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        thread = threading.Thread(target=server.serve_forever, name="databend-local", daemon=True)
        thread.start()
        if on_ready:
            on_ready(config.dsn(server.bound_port))
        stop.wait()
        server.shutdown()
        server.server_close()
