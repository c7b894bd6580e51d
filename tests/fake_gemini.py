"""A fake Gemini REST server: real HTTP on loopback, scripted faults, recorded requests.

It speaks the shapes google-genai sends and parses::

    POST /{version}/models/{model}:generateContent                 one JSON answer
    POST /{version}/models/{model}:streamGenerateContent?alt=sse   SSE, one JSON per event
    GET  /{version}/models/{model}                                 model metadata (key checks)

The response shapes are the real API's, each helper citing where the shape
is documented or was reported: the API reference (GenerateContentResponse,
Candidate.FinishReason, the google.rpc error model) and other clients' bug
reports for what the reference does not promise but the service sends
(empty candidates, content without parts, 429 bodies).

Any version prefix is accepted (v1, v1beta, ...). Each request takes the
first queued Reply that matches it (model and action filters, FIFO), else
the default set for its model, else a plain answer. Build replies with the
helpers below (`answer`, `server_error`, `rate_limited`, `hang`, `stream_cut`,
...), queue them with `push()`, then read `requests` to see what was sent.

    def test_retries(fake_gemini: FakeGemini) -> None:
        fake_gemini.push(server_error(503), answer("hello"))
        ...google-genai with base_url=fake_gemini.url...
        assert [r.model for r in fake_gemini.requests] == ["m", "m"]

The server runs its own event loop on a thread, so it serves test code and
subprocesses (the daemon) alike. Accepted sockets get TCP_NODELAY, or each
small write would wait ~40 ms for Nagle. Standalone, for benches and manual
runs (answers instantly unless --delay)::

    python tests/fake_gemini.py --port 8089 [--delay 0.05] [--echo]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import math
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

Action = Literal["generateContent", "streamGenerateContent", "get"]

DEFAULT_TEXT = "This is a fake Gemini answer."
_ROUTE = re.compile(
    r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+)(?::(?P<action>generateContent|streamGenerateContent))?$"
)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# --- replies -------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the fake does with one request."""

    status: int = 200
    text: str = DEFAULT_TEXT
    chunks: tuple[str, ...] | None = None  # stream pieces; None: `text` in up to 3 pieces
    echo: bool = False  # answer "You said: <last user text>" instead of `text`
    finish_reason: str | None = "STOP"
    block_reason: str | None = None  # promptFeedback.blockReason: the prompt was refused
    body: bytes | None = None  # sent as is (errors, malformed bodies)
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # before the response starts
    chunk_delay_s: float = 0.0  # stream: before each chunk after the first
    hang: bool = False  # read the request, never answer (until the client leaves)
    drop: bool = False  # close the connection without a response
    # Stream: after `fail_after` chunks, cut the connection or send an error event.
    fail_after: int | None = None
    fail_with: Literal["disconnect", "error"] = "disconnect"
    # "no_candidates": no candidates at all; "no_parts": content without parts.
    shape: Literal["normal", "no_candidates", "no_parts"] = "normal"
    # Stream: the finishReason comes alone in one more event, with no content.
    finish_alone: bool = False
    forever: bool = False  # stream: repeat the chunks until the client hangs up
    # functionCall parts ({"name", "args"[, "id"]}) after any text, in the last event.
    calls: tuple[dict[str, Any], ...] = ()


def answer(
    text: str = DEFAULT_TEXT,
    *,
    chunks: tuple[str, ...] | None = None,
    finish_reason: str = "STOP",
    delay_s: float = 0.0,
    chunk_delay_s: float = 0.0,
) -> Reply:
    return Reply(text="".join(chunks) if chunks else text, chunks=chunks,
                 finish_reason=finish_reason, delay_s=delay_s, chunk_delay_s=chunk_delay_s)


# --- function calling (API reference: Function calling; FunctionCall, FunctionResponse) ---
# With tools declared, the model answers with `functionCall` parts in the
# candidate's content instead of (or after) text: {"name": ..., "args": {...}},
# several in one turn for parallel calls; the finishReason is STOP. The client
# sends each result back as a `functionResponse` part ({"name", "response"}) in
# a user turn after the model's turn. A call the model failed to express ends
# with finishReason MALFORMED_FUNCTION_CALL and no content. Under
# toolConfig.functionCallingConfig.mode NONE the model never calls.


def function_call(name: str, args: Any = None, *, text: str = "", call_id: str | None = None
                  ) -> Reply:
    """One call; `args` as sent (a dict, or anything for malformed arguments)."""
    call: dict[str, Any] = {"name": name, "args": {} if args is None else args}
    if call_id is not None:
        call["id"] = call_id
    return Reply(text=text, calls=(call,))


def function_calls(*calls: tuple[str, dict[str, Any]]) -> Reply:
    """Parallel calls in one model turn."""
    return Reply(text="", calls=tuple({"name": n, "args": a} for n, a in calls))


def malformed_function_call() -> Reply:
    return Reply(text="", finish_reason="MALFORMED_FUNCTION_CALL")


def echo() -> Reply:
    return Reply(echo=True)


def error(
    status: int,
    message: str = "",
    *,
    reason: str | None = None,
    retry_delay_s: float | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """An error in Google's JSON shape: {"error": {"code", "message", "status", "details"}}."""
    details: list[dict[str, Any]] = []
    if reason is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                        "domain": "googleapis.com"})
    if retry_delay_s is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_delay_s:g}s"})
    payload = {"error": {"code": status, "message": message or http.HTTPStatus(status).phrase,
                         "status": _STATUS_NAMES.get(status, "UNKNOWN"), "details": details}}
    return Reply(status=status, body=json.dumps(payload).encode(), headers=headers)


def server_error(status: int = 500) -> Reply:
    return error(status, "The service is currently unavailable." if status == 503 else "")


def rate_limited(retry_after: float | None = None, *, retry_delay_s: float | None = None) -> Reply:
    """429; `retry_after` as a Retry-After header, `retry_delay_s` as google.rpc.RetryInfo."""
    headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
    return error(429, "Resource has been exhausted (e.g. check quota).",
                 retry_delay_s=retry_delay_s, headers=headers)


def unauthorized() -> Reply:
    return error(401, "Request had invalid authentication credentials.")


def forbidden() -> Reply:
    return error(403, "Method doesn't allow unregistered callers.")


def invalid_key() -> Reply:
    """What the real Gemini API answers to a wrong key: 400, not 401."""
    return error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")


def not_found(model: str = "no-such-model") -> Reply:
    return error(404, f"models/{model} is not found for API version v1beta.")


def context_too_long(tokens: int = 1_200_000) -> Reply:
    return error(400, f"The input token count ({tokens}) exceeds the maximum number of "
                      "tokens allowed (1048576).")


def prompt_blocked(reason: str = "SAFETY") -> Reply:
    return Reply(block_reason=reason, finish_reason=None)


def answer_blocked(reason: str = "SAFETY") -> Reply:
    """A candidate with finishReason SAFETY (or another filter) and no text."""
    return Reply(text="", finish_reason=reason)


# --- real answer shapes -------------------------------------------------------------
#
# Reference: https://ai.google.dev/api/generate-content#generatecontentresponse
# ("either all requested candidates are returned or no candidates at all"),
# and Candidate.FinishReason: STOP, MAX_TOKENS, SAFETY, RECITATION, LANGUAGE,
# OTHER, BLOCKLIST, PROHIBITED_CONTENT, SPII, MALFORMED_FUNCTION_CALL...
# ("If empty, the model has not stopped generating the tokens"; "When
# streaming, content is empty if content filters blocks the output"):
# https://docs.cloud.google.com/python/docs/reference/vertexai/1.134.0/vertexai.generative_models.FinishReason


def no_text(finish_reason: str = "OTHER") -> Reply:
    """A candidate with a finishReason and no content, as in
    {"candidates": [{"finishReason": "OTHER", "index": 0}], "usageMetadata": {...}}
    (reported in google/generative-ai-docs#235; LANGUAGE, MAX_TOKENS alike,
    BerriAI/litellm#40477)."""
    return Reply(text="", finish_reason=finish_reason)


def no_parts() -> Reply:
    """finishReason STOP and content {"role": "model"} without parts (BerriAI/litellm#24442,
    google-gemini/deprecated-generative-ai-python#744, AstrBotDevs/AstrBot#6735)."""
    return Reply(text="", shape="no_parts")


def no_candidates() -> Reply:
    """Only usageMetadata and modelVersion: no candidates and no promptFeedback (the
    reference allows "no candidates at all"; livekit/agents#4066 handles it)."""
    return Reply(text="", shape="no_candidates")


def unfinished(chunks: tuple[str, ...] = ("Once ", "upon ")) -> Reply:
    """A stream whose last chunk carries no finishReason: the model had not stopped."""
    return Reply(text="".join(chunks), chunks=chunks, finish_reason=None)


def blocked_after_text(chunks: tuple[str, ...] = ("Step one: ", "mix "),
                       reason: str = "SAFETY") -> Reply:
    """Text, then a filter stops the answer: streamed, the last event carries the
    finishReason with empty content (FinishReason.SAFETY, reference above); whole,
    the candidate keeps the text generated so far."""
    return Reply(text="".join(chunks), chunks=chunks, finish_reason=reason, finish_alone=True)


def endless(piece: str = "la " * 300) -> Reply:
    """An answer that never ends (a broken proxy or model loop): streamed, the same chunk
    forever; whole, a JSON body whose text never closes."""
    return Reply(text=piece, chunks=(piece,), finish_reason=None, forever=True)


def rejected_field() -> Reply:
    """A 200 whose JSON the SDK's pydantic models reject (a field of the wrong type), as
    googleapis/python-genai#2510 and #1016 report for real responses."""
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                            "finishReason": "STOP", "index": 0,
                            "citationMetadata": {"citationSources": [{"startIndex": "a"}]}}]}
    return Reply(body=json.dumps(body).encode())


def quota_exhausted(retry_delay_s: float = 37.0, model: str = "gemini-flash-latest") -> Reply:
    """The 429 the Gemini API sends when a quota is spent: RESOURCE_EXHAUSTED with
    QuotaFailure, Help and google.rpc.RetryInfo.retryDelay in the body, and no Retry-After
    header (googleapis/python-genai#2044, browserbase/mcp-server-browserbase#129,
    dcdpr/jp#1061: "Gemini answers a 429 without a Retry-After header")."""
    payload = {"error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing "
                   "details. For more information on this error, head to: "
                   "https://ai.google.dev/gemini-api/docs/rate-limits.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{
                 "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                 "quotaDimensions": {"location": "global", "model": model},
                 "quotaValue": "10"}]},
            {"@type": "type.googleapis.com/google.rpc.Help",
             "links": [{"description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": f"{retry_delay_s:g}s"},
        ]}}
    return Reply(status=429, body=json.dumps(payload).encode())


def hang() -> Reply:
    return Reply(hang=True)


def drop_connection() -> Reply:
    return Reply(drop=True)


def malformed(body: bytes = b'{"candidates": [{"content": oops') -> Reply:
    return Reply(body=body)


def stream_cut(
    after: int = 2,
    *,
    chunks: tuple[str, ...] = ("Once ", "upon ", "a ", "time"),
    how: Literal["disconnect", "error"] = "disconnect",
) -> Reply:
    """A stream that sends `after` chunks, then breaks (dropped connection or error event)."""
    return Reply(text="".join(chunks), chunks=chunks, fail_after=after, fail_with=how)


def unused_port() -> int:
    """A loopback port with nothing listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- what was received -----------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    version: str | None
    model: str | None
    action: Action | None
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None

    @property
    def contents(self) -> list[dict[str, Any]]:
        return list(self.body.get("contents", [])) if isinstance(self.body, dict) else []

    @property
    def texts(self) -> list[str]:
        """Every part's text of `contents`, in order."""
        return [part.get("text", "") for content in self.contents
                for part in content.get("parts", [])]

    @property
    def system_instruction(self) -> str | None:
        if not isinstance(self.body, dict) or "systemInstruction" not in self.body:
            return None
        return "".join(p.get("text", "") for p in self.body["systemInstruction"].get("parts", []))

    @property
    def function_responses(self) -> list[dict[str, Any]]:
        """Every functionResponse part of `contents`, in order."""
        return [part["functionResponse"] for content in self.contents
                for part in content.get("parts", []) if "functionResponse" in part]

    @property
    def declared_tools(self) -> list[str]:
        """The names of the function declarations sent."""
        tools = self.body.get("tools", []) if isinstance(self.body, dict) else []
        return [d["name"] for tool in tools for d in tool.get("functionDeclarations", [])]

    @property
    def calling_mode(self) -> str | None:
        if not isinstance(self.body, dict):
            return None
        config = self.body.get("toolConfig", {}).get("functionCallingConfig", {})
        return config.get("mode")

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key")


@dataclass
class _Scripted:
    reply: Reply
    model: str | None
    action: Action | None

    def matches(self, model: str | None, action: Action | None) -> bool:
        return (self.model in (None, model)) and (self.action in (None, action))


@dataclass
class _Script:
    """The queue and defaults; shared between the test thread and the server thread."""

    queue: list[_Scripted] = field(default_factory=list)
    defaults: dict[str | None, Reply] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, model: str | None, action: Action | None) -> Reply:
        with self.lock:
            for index, item in enumerate(self.queue):
                if item.matches(model, action):
                    return self.queue.pop(index).reply
            return self.defaults.get(model) or self.defaults.get(None) or Reply()


# --- the server --------------------------------------------------------------------


class FakeGemini:
    """The fake server; `with FakeGemini() as fake:` or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0,
                 echo: bool = False) -> None:
        self.host = host
        self.port = port
        self.delay_s = delay_s
        self._script = _Script()
        if echo:
            self._script.defaults[None] = Reply(echo=True)
        self._requests: list[RecordedRequest] = []
        self._received = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None

    # -- scripting

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def push(self, *replies: Reply, model: str | None = None,
             action: Action | None = None) -> None:
        """Queue replies for the next matching requests, in order."""
        with self._script.lock:
            self._script.queue.extend(_Scripted(r, model, action) for r in replies)

    def set_default(self, reply: Reply, *, model: str | None = None) -> None:
        """The reply for every request (of `model`) that no queued reply matches."""
        with self._script.lock:
            self._script.defaults[model] = reply

    def reset(self) -> None:
        with self._script.lock:
            self._script.queue.clear()
            self._script.defaults.clear()
        with self._received:
            self._requests.clear()

    @property
    def pending(self) -> int:
        """Queued replies not used yet."""
        with self._script.lock:
            return len(self._script.queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._received:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until `count` requests arrived (e.g. from a daemon subprocess)."""
        with self._received:
            if not self._received.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} of {count} requests after {timeout}s")
            return list(self._requests)

    # -- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_thread, name="fake-gemini", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise self._startup_error

    def request_stop(self) -> None:
        """Ask the server to stop; safe from any thread and from signal handlers."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeGemini:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run_thread(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # surface bind failures in start()
            self._startup_error = exc
            self._ready.set()

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until stop() (or the task is cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready is not None:
            on_ready()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    # -- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; that is its right
        except asyncio.CancelledError:
            # stop() cancels open connections. This is the top of the task
            # asyncio made for the connection, and Python 3.11 logs a
            # cancelled one as an error, so end it quietly instead.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, headers = _parse_head(head)
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        request = self._record(method, target, headers, raw)
        reply = self._script.next_reply(request.model, request.action)
        if reply.delay_s or self.delay_s:
            await asyncio.sleep(reply.delay_s + self.delay_s)
        if reply.hang:
            await reader.read()  # until the client gives up and closes
            return False
        if reply.drop:
            return False
        if request.action is None and request.model is None:
            await _send(writer, 404, _json_error(404, f"no route for {method} {target}"))
            return True
        return await self._respond(writer, request, reply)

    def _record(self, method: str, target: str, headers: dict[str, str], raw: bytes
                ) -> RecordedRequest:
        parts = urlsplit(target)
        match = _ROUTE.match(parts.path)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        action: Action | None = None
        if match is not None:
            action = match["action"] or ("get" if method == "GET" else None)  # type: ignore[assignment]
        request = RecordedRequest(
            method=method, path=target,
            version=match["version"] if match else None,
            model=match["model"] if match else None,
            action=action, headers=headers, body=body,
        )
        with self._received:
            self._requests.append(request)
            self._received.notify_all()
        return request

    async def _respond(self, writer: asyncio.StreamWriter, request: RecordedRequest,
                       reply: Reply) -> bool:
        if reply.body is not None or reply.status != 200:
            body = reply.body if reply.body is not None else _json_error(reply.status, "")
            await _send(writer, reply.status, body, reply.headers)
            return True
        if reply.echo:
            texts = request.texts
            reply = replace(reply, text=f"You said: {texts[-1] if texts else ''}")
        if reply.calls and request.calling_mode == "NONE":
            reply = replace(reply, calls=(), text=reply.text or DEFAULT_TEXT)
        if request.action == "get":
            await _send(writer, 200, json.dumps(_model_info(request.model or "")).encode())
            return True
        if request.action == "streamGenerateContent":
            return await _stream(writer, request, reply)
        if reply.forever:
            return await _endless_body(writer, reply)
        await _send(writer, 200, json.dumps(_response(request, reply, reply.text, True)).encode())
        return True


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "Content-Type: application/json; charset=UTF-8",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _stream(writer: asyncio.StreamWriter, request: RecordedRequest, reply: Reply) -> bool:
    """Server-sent events over chunked encoding; False if the connection was cut."""
    head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream",
            "Transfer-Encoding: chunked"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    events = _stream_events(request, reply)
    if reply.forever:
        while True:  # until the client hangs up (ConnectionError ends the connection)
            await _send_chunk(writer, _sse(events[0]))
            await asyncio.sleep(reply.chunk_delay_s)  # also lets the loop serve others
    for index, event in enumerate(events if reply.fail_after is None
                                  else events[:reply.fail_after]):
        if index and reply.chunk_delay_s:
            await asyncio.sleep(reply.chunk_delay_s)
        await _send_chunk(writer, _sse(event))
    if reply.fail_after is not None:
        if reply.fail_with == "disconnect":
            await writer.drain()
            writer.transport.abort()  # no terminating chunk: the body is incomplete
            return False
        await _send_chunk(writer, _sse(json.loads(_json_error(503, "The model is overloaded."))))
    await _send_chunk(writer, b"")  # the terminating zero-length chunk
    return True


async def _endless_body(writer: asyncio.StreamWriter, reply: Reply) -> bool:
    """A whole answer whose JSON body never ends (chunked): the text grows forever."""
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json; charset=UTF-8",
            "Transfer-Encoding: chunked"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await _send_chunk(writer, b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "')
    piece = json.dumps(reply.text)[1:-1].encode()
    while True:  # until the client hangs up
        await _send_chunk(writer, piece)
        await asyncio.sleep(reply.chunk_delay_s)


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\r\n\r\n"


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


def _stream_events(request: RecordedRequest, reply: Reply) -> list[dict[str, Any]]:
    pieces = reply.chunks or _split(reply.text)
    if reply.block_reason is not None or not pieces:
        return [_response(request, reply, "", True)]
    events = [
        _response(request, reply, piece, last=index == len(pieces) - 1 and not reply.finish_alone,
                  so_far=pieces[:index + 1])
        for index, piece in enumerate(pieces)
    ]
    if reply.finish_alone:
        events.append(_response(request, reply, "", True, so_far=pieces))
    return events


def _split(text: str, parts: int = 3) -> tuple[str, ...]:
    if not text:
        return ()
    size = max(1, math.ceil(len(text) / parts))
    return tuple(text[i:i + size] for i in range(0, len(text), size))


def _response(request: RecordedRequest, reply: Reply, text: str, last: bool,
              so_far: tuple[str, ...] = ()) -> dict[str, Any]:
    """One GenerateContentResponse as JSON (a whole answer, or one stream chunk)."""
    prompt_tokens = _tokens(" ".join(request.texts) + (request.system_instruction or ""))
    answer_tokens = _tokens("".join(so_far) if so_far else text)
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": answer_tokens,
             "totalTokenCount": prompt_tokens + answer_tokens}
    if reply.block_reason is not None:
        return {"promptFeedback": {"blockReason": reply.block_reason, "safetyRatings": []},
                "usageMetadata": {"promptTokenCount": prompt_tokens,
                                  "totalTokenCount": prompt_tokens}}
    if reply.shape == "no_candidates":
        return {"usageMetadata": usage, "modelVersion": request.model,
                "responseId": "fake-response"}
    candidate: dict[str, Any] = {"index": 0}
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    if last:
        parts += [{"functionCall": call} for call in reply.calls]
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    elif reply.shape == "no_parts":
        candidate["content"] = {"role": "model"}
    if last and reply.finish_reason is not None:
        candidate["finishReason"] = reply.finish_reason
    return {"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": request.model, "responseId": "fake-response"}


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _model_info(model: str) -> dict[str, Any]:
    return {"name": f"models/{model}", "version": "001", "displayName": model,
            "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
            "supportedGenerationMethods": ["generateContent", "countTokens"]}


def _json_error(status: int, message: str) -> bytes:
    text = message or http.HTTPStatus(status).phrase
    status_name = _STATUS_NAMES.get(status, "UNKNOWN")
    return json.dumps({"error": {"code": status, "message": text, "status": status_name}}).encode()


# --- pytest and command line ------------------------------------------------------


@pytest.fixture(name="fake_gemini")
def fake_gemini_fixture() -> Iterator[FakeGemini]:
    """A started FakeGemini, fresh for each test."""
    with FakeGemini() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Gemini REST server on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--echo", action="store_true", help='answer "You said: <prompt>"')
    args = parser.parse_args(argv)
    fake = FakeGemini(args.host, args.port, delay_s=args.delay, echo=args.echo)
    asyncio.run(_serve_until_signal(fake))


async def _serve_until_signal(fake: FakeGemini) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, fake.request_stop)
    await fake.serve(on_ready=lambda: print(f"fake-gemini listening on {fake.url}", flush=True))


if __name__ == "__main__":
    main()
