"""The live service: many conversations at once over WebSocket (or plain HTTP), one
shared causal model, text encoding micro-batched across conversations.

    app = create_app("runs/.../RUN", settings=ServeSettings(max_conversations=500))
    # python -m corect.serve --run RUN serves it with uvicorn

Endpoints (JSON everywhere; the protocol with an example client is in the README,
"Serving live conversations"):

- ``GET /health``: the run, its labels, modalities and dims, text encoder, the number of
  open conversations, limits and batching figures;
- WebSocket ``/v1/conversations/{id}``: one message per utterance
  (:mod:`corect.serving.messages`), one reply each, in order: ``{"index", "label",
  "probabilities"}``, or ``{"error", "field"}`` for a message that cannot be taken (the
  index does not advance and the socket stays open);
- ``POST /v1/conversations/{id}/utterances``: the same over HTTP (errors: 400, too big:
  413, service full: 503); a conversation id is the same conversation over both;
- ``GET /v1/conversations/{id}`` (its utterance count), ``DELETE`` (closes it, frees
  its state);
- ``/``: the live page (``corect/serving/static/``), when present.

Conversations, their limits and idle closing: :mod:`corect.serving.sessions`; the
micro-batching: :mod:`corect.serving.batching`. Only causal runs are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from corect.common.errors import InputError
from corect.common.runtime import DEFAULT_DEVICE, select_device
from corect.config import ConfigError
from corect.inference.recognizer import Prediction, StreamingRecognizer
from corect.serving.batching import MicroBatcher
from corect.serving.messages import MessageError, Utterance, parse_message
from corect.serving.sessions import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CapacityError,
    Conversation,
    Conversations,
)

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServeSettings:
    """The service's limits and batching (``python -m corect.serve`` options)."""

    max_conversations: int = 2000
    idle_timeout_s: float = 600.0
    max_message_bytes: int = 1 << 20
    batch_wait_ms: float = 5.0
    max_batch: int = 64
    device: str = DEFAULT_DEVICE
    text_model: str | None = None  # a local text model directory (default: the run's)
    workers: int = 1  # model threads, each takes a share of every batch
    threads: int | None = None  # torch CPU threads (None: leave torch's setting)

    def check(self) -> None:
        """Refuse values out of range (:class:`ConfigError` naming the setting)."""
        checks = {
            "max_conversations": self.max_conversations >= 1,
            "idle_timeout_s": math.isfinite(self.idle_timeout_s) and self.idle_timeout_s > 0,
            "max_message_bytes": self.max_message_bytes >= 64,
            "batch_wait_ms": math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0,
            "max_batch": self.max_batch >= 1,
            "workers": self.workers >= 1,
            "threads": self.threads is None or self.threads >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"serve setting {name}: {getattr(self, name)!r} is out of range")


class Service:
    """The model, the open conversations and the batcher of one served run."""

    def __init__(self, run_dir: str | Path, settings: ServeSettings) -> None:
        settings.check()
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.run_dir = str(run_dir)
        self.settings = settings
        device = str(select_device(settings.device, "--device"))
        self.recognizer = StreamingRecognizer.from_run(run_dir, device, settings.text_model)
        self.text_error = self._load_text_encoder()
        self.text_encoder: dict[str, Any] | None = None  # the encoder's record, when it encodes
        if "t" in self.recognizer.dims and self.text_error is None:
            self.text_encoder = self.recognizer.text_encoder.description
        self.conversations = Conversations(
            self.recognizer, settings.max_conversations, settings.idle_timeout_s
        )
        self.batcher = MicroBatcher(
            self.recognizer,
            max_batch=settings.max_batch,
            wait_s=settings.batch_wait_ms / 1000,
            workers=settings.workers,
            text_error=self.text_error,
        )
        self.started = time.time()
        self._warm_up()

    def _load_text_encoder(self) -> str | None:
        """Load the run's text encoder now (the first utterance does not wait for it);
        why texts cannot be encoded, or None."""
        if "t" not in self.recognizer.dims:
            return None
        try:
            self.recognizer.text_encoder.encode(["Hello."])
        except InputError as err:
            return str(err)
        return None

    def _warm_up(self) -> None:
        """One utterance through the model on a throwaway state."""
        state = self.recognizer.new_state()
        features = {m: torch.zeros(d) for m, d in self.recognizer.dims.items()}
        with contextlib.suppress(InputError):
            self.recognizer.push("warm-up", features, state=state)

    def health(self) -> dict[str, Any]:
        r = self.recognizer
        return {
            "status": "ok",
            "run": self.run_dir,
            "labels": r.labels,
            "modalities": "".join(r.dims),
            "dims": r.dims,
            "text_encoder": self.text_encoder,
            "text_error": self.text_error,
            "open_conversations": len(self.conversations),
            "causal": True,
            "device": str(r.device),
            "limits": {
                k: v for k, v in asdict(self.settings).items() if k not in ("device", "text_model")
            },
            "batching": self.batcher.stats.summary(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def parse(self, raw: str | bytes) -> Utterance:
        return parse_message(raw, self.recognizer.dims, self.settings.max_message_bytes)

    async def predict(self, conversation: Conversation, utterance: Utterance) -> dict[str, Any]:
        """The reply to the next utterance of `conversation` (:class:`MessageError` for
        one the model cannot take); one utterance of a conversation at a time."""
        async with conversation.lock:
            if conversation.closed:
                raise MessageError("the conversation was closed", field="id", status=410)
            conversation.busy += 1
            conversation.touch()
            try:
                prediction = await self.batcher.submit(conversation.state, utterance)
            finally:
                conversation.busy -= 1
                conversation.touch()
        return reply(prediction)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.conversations.sweep_interval())
            await self.conversations.sweep()


def reply(prediction: Prediction) -> dict[str, Any]:
    return {
        "index": prediction.index,
        "label": prediction.label,
        "probabilities": prediction.probabilities,
    }


def error_response(err: MessageError) -> JSONResponse:
    return JSONResponse(err.reply(), status_code=err.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) beyond `limit` bytes before reading it all."""
    declared = request.headers.get("content-length", "")
    too_big = MessageError(f"the message is larger than the limit of {limit} bytes", status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def health(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.service.health())


async def post_utterance(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    try:
        utterance = service.parse(await read_body(request, service.settings.max_message_bytes))
        conversation = service.conversations.get_or_open(request.path_params["id"])
        return JSONResponse(await service.predict(conversation, utterance))
    except MessageError as err:
        return error_response(err)


async def conversation_info(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    conversation_id = request.path_params["id"]
    conversation = service.conversations.get(conversation_id)
    if conversation is None:
        return error_response(
            MessageError(f"no open conversation {conversation_id[:40]!r}", "id", 404)
        )
    if request.method == "DELETE":
        await service.conversations.close(conversation_id)
        return JSONResponse(
            {"id": conversation_id, "utterances": conversation.utterances, "closed": True}
        )
    return JSONResponse(
        {
            "id": conversation_id,
            "utterances": conversation.utterances,
            "idle_s": round(time.monotonic() - conversation.last_active, 3),
            "websockets": len(conversation.sockets),
        }
    )


def close_reason(err: MessageError) -> str:
    """A WebSocket close reason (at most 123 bytes)."""
    text = err.reason if isinstance(err, CapacityError) else str(err)
    return text.encode("utf-8")[:120].decode("utf-8", "ignore")


async def conversation_socket(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    await websocket.accept()
    try:
        conversation = service.conversations.get_or_open(websocket.path_params["id"])
    except MessageError as err:
        await websocket.send_text(json.dumps(err.reply()))
        code = CLOSE_TRY_AGAIN if isinstance(err, CapacityError) else CLOSE_POLICY
        await websocket.close(code, close_reason(err))
        return
    key = id(websocket)
    conversation.sockets[key] = websocket.close
    try:
        while not conversation.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                answer = await service.predict(conversation, service.parse(raw))
            except MessageError as err:
                answer = err.reply()
            await websocket.send_text(json.dumps(answer))
    except (WebSocketDisconnect, RuntimeError):  # the client left, or the socket was closed
        pass
    finally:
        conversation.sockets.pop(key, None)


def create_app(run_dir: str | Path, *, settings: ServeSettings | None = None) -> Starlette:
    """The service of causal run `run_dir` (an offline run is refused: ConfigError)."""
    service = Service(run_dir, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.batcher.start()
        sweeper = asyncio.get_running_loop().create_task(service.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await service.conversations.close_all()
            await service.batcher.stop()

    conversation = "/v1/conversations/{id}"
    routes: list[Any] = [
        Route("/health", health, methods=["GET"]),
        Route(f"{conversation}/utterances", post_utterance, methods=["POST"]),
        Route(conversation, conversation_info, methods=["GET", "DELETE"]),
        WebSocketRoute(conversation, conversation_socket),
    ]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="page"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return app
