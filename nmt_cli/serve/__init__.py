"""``nmt serve``: translation over HTTP, batching concurrent requests (``batcher``), checking bodies
(``protocol``), the FastAPI ``app`` and its ``page``. FastAPI and uvicorn, an optional extra, are
imported only when a server starts."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any, Sequence

from nmt_cli.serve.settings import ServeConfig
from nmt_cli.errors import NmtError


def require_server_extra() -> None:
    """Fail in one line when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise NmtError(f"nmt serve needs FastAPI and uvicorn ({exc.name} is not installed); run "
                       "pip install 'nmt[serve]'") from None


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise NmtError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                       "--host or --port") from None
    return sock


def run_server(paths: Sequence[Path], settings: ServeConfig, device: str = "auto",
               decode: dict[str, Any] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then finish the requests in flight and return."""
    require_server_extra()
    import uvicorn

    from nmt_cli.serve.app import Service, make_app

    from nmt_cli.decoding.engine import check_model_paths

    check_model_paths(paths)  # before the port is taken
    service = Service([Path(p) for p in paths], settings, device, decode)
    sock = listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    # past max_connections uvicorn answers 503; an idle keep-alive connection closes after 5 s
    config = uvicorn.Config(make_app(service), log_config=None, log_level="warning",
                            access_log=False, lifespan="on", loop="asyncio", http="h11",
                            timeout_graceful_shutdown=round(settings.drain) + 30,
                            limit_concurrency=settings.max_connections, timeout_keep_alive=5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                service.batcher.close()
                # past the drain, what still waits is answered 503 (the batch that runs ends
                # within uvicorn's margin of 30 s more, so no request is cut off mid-answer)
                timer = threading.Timer(settings.drain, service.batcher.refuse_waiting)
                timer.daemon = True
                timer.start()
                service.log(f"{signal.Signals(sig).name}: no new requests; the ones in flight "
                            f"have {settings.drain:g} s to finish (--drain)", always=True)
            super().handle_exit(sig, frame)

    server = Server(config)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    # After a graceful stop uvicorn raises the signal again for the handler it found; with this
    # one in place the process then exits 0 instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    shown = f"[{host}]" if ":" in host else host
    service.log(f"listening on http://{shown}:{port} (loading the model)", always=True)
    server.run(sockets=[sock])
    if service.error is not None:
        raise service.error
    service.log("stopped", always=True)
