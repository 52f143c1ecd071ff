"""The HTTP side of ``nmt serve``: the model service, the FastAPI app and its access log. The
model loads in the worker thread (``/health`` answers 503 until then); requests are queued for
the batcher and awaited without blocking the event loop."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nmt_cli import faults
from nmt_cli.config import DecodeConfig, to_dict
from nmt_cli.serve.settings import ServeConfig
from nmt_cli.errors import NmtError
from nmt_cli.serve.batcher import BatchFailed, Batcher, BatchReport, QueueFull
from nmt_cli.serve.page import PAGE
from nmt_cli.serve.protocol import ApiError, body_limit, decode_json, parse_request, render


class Log:
    """Lines on stderr, whole lines even when two threads write at once."""

    def __init__(self, quiet: bool):
        self.quiet, self._lock = quiet, threading.Lock()

    def __call__(self, line: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        with self._lock:
            print(line, file=sys.stderr, flush=True)


class Service:
    def __init__(self, paths: list[Path], settings: ServeConfig, device: str = "auto",
                 decode: dict[str, Any] | None = None):
        self.paths, self.settings, self.device_name = paths, settings, device
        self.decode_overrides = decode or {}
        self.log = Log(settings.quiet)
        self.ready = False
        self.error: NmtError | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self.defaults: DecodeConfig | None = None
        self.info: dict[str, Any] = {}
        self.engine: Any = None  # the decoding engine, once loaded
        self._unique = itertools.count()
        self.batcher = Batcher(self._translate, settings.max_batch_sentences,
                               settings.max_wait_ms / 1000.0, self._log_batch,
                               max_queue=settings.max_queue, turn_work=settings.turn_work)

    def load(self) -> None:
        """Load the model and warm it up; on a user error, record it and stop the server."""
        start = time.perf_counter()
        try:
            from nmt_cli.decoding.engine import EngineSettings, open_engine

            # the batcher is the one caller; on the CPU the engine spreads a batch of enough
            # sentences over its workers, one per thread, and runs a small one on one worker
            self.engine = open_engine(self.paths, EngineSettings(
                self.device_name, self.settings.threads, 0, self.decode_overrides))
            self.defaults, self.precision = self.engine.defaults, self.engine.precision
            self._run(self.defaults, False, ["warm up"])
            self.info = self._model_info(self.engine.recipe, self.engine.versions)
        except NmtError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported as one line, the server stops
            self.error = NmtError(f"cannot load the model: {exc.__class__.__name__}: {exc}")
        if self.error is not None:
            self.on_failure()
            return
        self.ready = True
        self.log(f"ready: {self.info['name']} ({self.info['parameters']:,} parameters) loaded in "
                 f"{time.perf_counter() - start:.1f} s, {self.precision}", always=True)

    def _run(self, cfg: DecodeConfig, attention: bool, lines: list[str], first: int = 0,
             constraints: list | None = None):
        return self.engine.translate_lines(lines, cfg, return_attention=attention,
                                           first_index=first, constraints=constraints)

    def _translate(self, key: tuple, lines: list, first: int):
        """One group's lines: texts, or (text, phrases) pairs of constrained requests."""
        cfg, attention, alone = key
        texts = [line if isinstance(line, str) else line[0] for line in lines]
        phrases = [[] if isinstance(line, str) else list(line[1]) for line in lines]
        faults.point("serve-batch", lines=texts)
        return self._run(cfg, attention, texts, first if alone is not None else 0,
                         phrases if any(phrases) else None)

    def _log_batch(self, report: BatchReport) -> None:
        failed = f", {report.failed} failed" if report.failed else ""
        dropped = f", {report.dropped} cancelled sentences dropped" if report.dropped else ""
        if not report.requests:
            self.log(f"dropped {report.dropped} sentences of cancelled requests")
            return
        self.log(f"batch: {report.requests} requests, {report.sentences} sentences, "
                 f"{report.groups} groups, {report.seconds * 1000:.1f} ms{failed}{dropped}")

    def _model_info(self, recipe, versions: dict[str, str]) -> dict[str, Any]:
        import fastapi
        import uvicorn

        limits = {k: v for k, v in to_dict(self.settings).items()
                  if k not in ("host", "port", "quiet", "threads")}
        tok = self.engine.tok
        return {
            "name": recipe.name,
            "checkpoints": [p.name for p in self.paths],  # no folder: it is the host's business
            "languages": {"source": recipe.data.src_lang, "target": recipe.data.tgt_lang},
            "architecture": to_dict(recipe.model),
            "parameters": self.engine.parameters,
            "vocabulary": {"source": tok.src_vocab_size, "target": tok.tgt_vocab_size,
                           "joint": tok.joint},
            "tokenizer_sha256": tok.sha256(),
            "versions": {**versions, "fastapi": fastapi.__version__,
                         "uvicorn": uvicorn.__version__},
            "device": self.engine.device,
            "precision": self.precision,  # decode.precision as resolved when the model loaded
            "decode": to_dict(self.defaults),
            "limits": limits,
        }

    async def translate(self, raw: dict[str, Any],
                        disconnected: Callable[[], Any]) -> tuple[int, dict[str, Any] | None]:
        """The answer, or None when the client went away first (its work is dropped)."""
        assert self.defaults is not None
        req = parse_request(raw, self.defaults, self.settings)
        opts = req.options
        if opts.return_alignments and not self.engine.can_align:
            raise ApiError(400, "return_alignments", "not available on an exported CTranslate2 "
                                                     "model; serve the .pt checkpoint for it")
        if req.constraints is not None and not self.engine.can_constrain:
            raise ApiError(422, "constraints", "this server runs an exported CTranslate2 model, "
                                               "which cannot decode with constraints; serve the "
                                               ".pt checkpoint for them")
        # Sampling seeds follow the line number within the request, as in `nmt translate`, so a
        # sampled request gets a search of its own; every other request shares one per setting.
        alone = next(self._unique) if req.decode.sample else None
        key = (req.decode, opts.return_alignments, alone)
        try:
            future = self.batcher.submit(req.lines(), key, req.work)
        except QueueFull as exc:
            raise ApiError(503, "server", str(exc), {"Retry-After": str(exc.retry_after)}) \
                from None
        except BatchFailed as exc:
            raise ApiError(503, "server", str(exc)) from None
        answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=self.settings.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():
                answer.cancel()  # the batcher drops what is left of it
        if answer not in done:
            if gone in done:
                return len(req.texts), None
            raise ApiError(504, "server", f"not answered within {self.settings.timeout:g} s "
                                          "(--timeout); send fewer texts or retry later")
        try:
            results = answer.result()
        except BatchFailed as exc:
            self.log(f"error: a request failed: {exc}", always=True)
            raise ApiError(500, "server", "translating this request failed; the server's log "
                                          "says why") from None
        return len(req.texts), render(results, opts, req.decode.n_best)


class AccessLog:
    """One line per request: client, method and path, status, sentences, latency."""

    def __init__(self, app, log: Log):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]  # 0 until a response starts

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:  # uvicorn gave up on it at shutdown: say so in a line
            self.log(f"error: {scope['path']!r}: cut off at shutdown", always=True)
        except Exception as exc:  # noqa: BLE001 - a bug answers one JSON line, never a traceback
            self.log(f"error: {scope['path']!r}: {exc.__class__.__name__}: {exc}", always=True)
            if not status[0]:  # nothing sent yet
                await error(500, "the server failed on this request; its log says why")(
                    scope, receive, send_status)
        finally:
            client = scope.get("client") or ("-", 0)
            sentences = scope.get("state", {}).get("sentences", 0)
            path = quote(scope["path"], safe="/:@!$&'()*+,;=-._~")  # one line, whatever it holds
            self.log(f'{client[0]}:{client[1]} "{scope["method"]} {path}" {status[0]} '
                     f"{sentences} sentences {(time.perf_counter() - start) * 1000:.1f} ms")


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 as soon as it is longer than ``limit`` bytes, and with 408
    when it takes the client more than ``timeout`` seconds to send."""
    declared = request.headers.get("content-length", "")
    too_long = ApiError(413, "body", f"longer than this server's {limit:,} bytes (--max-texts "
                                     "times --max-chars)")
    if declared.isdigit() and int(declared) > limit:
        raise too_long
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_long
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, "body", f"not received within {timeout:g} s") from None
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes its connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class HostCheck:
    """400 for a Host header that is not one of ``allowed`` (any port)."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, {host.lower() for host in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed and host not in self.allowed:
                body = error(400, "not a host this server answers for (--allowed-hosts)", "host")
                return await body(scope, receive, send)
        return await self.app(scope, receive, send)


def make_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start(setup=service.load)
        yield
        service.batcher.stop(timeout=60)  # after the drain: what still waits is refused

    app = FastAPI(title="nmt", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(HostCheck, allowed=service.settings.allowed_hosts)
    app.add_middleware(AccessLog, log=service.log)
    limit = body_limit(service.settings)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    async def health():
        if service.ready:
            batcher = service.batcher
            return {"status": "ready", "waiting": batcher.waiting, "batches": batcher.batches,
                    "sentences": batcher.sentences, "dropped": batcher.dropped}
        return error(503, "the model is still loading")

    @app.get("/model")
    async def model():
        if not service.ready:
            return error(503, "the model is still loading; retry when GET /health answers 200")
        return service.info

    @app.post("/translate")
    async def translate(request: Request):
        if not service.ready:
            return error(503, "the model is still loading; retry when GET /health answers 200")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(400, "content-type", f"expected application/json, got "
                                                f"{kind or 'none'}")
        raw = decode_json(await read_body(request, limit, service.settings.read_timeout))
        sentences, body = await service.translate(raw, lambda: wait_for_disconnect(request))
        request.state.sentences = sentences
        if body is None:
            return Response(status_code=499)  # nobody is left to read it
        return JSONResponse(body)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE)

    return app
