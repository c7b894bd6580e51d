"""OpenAI-compatible chat completions and models, mapped onto agentd's chat command.

The last message must be the user's: it is the prompt. Which session answers:

- named (header X-Agentd-Session, else the `user` field): that session's own
  stored history is the context and earlier messages in the request are
  ignored; a name not found yet starts a session of that name;
- unnamed: the conversation the earlier messages continue, if this daemon
  answered it (a hash of uid and messages so far, kept in memory); else a new
  session. A system (or developer) message is the new session's system prompt.

The answer is the chat command's reply: stored, audited and rate-limited as a
chat on the socket. A streamed answer is sent as server-sent events in
OpenAI's chunk format, ending with `data: [DONE]`; headers go out with the
first chunk, so a refusal before it still gets its HTTP status.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from typing import Any, Final

from aiohttp import web

from agentd.http.bridge import BRIDGE, MODELS, HttpError, error_response, peer, read_json
from agentd.protocol import ErrorCode

SESSION_HEADER: Final = "X-Agentd-Session"
DEFAULT_MODEL: Final = "agentd"  # the daemon's configured model and its fallbacks
MAX_CONVERSATIONS: Final = 10_000  # unnamed conversations remembered (oldest forgotten)
_SYSTEM_ROLES: Final = ("system", "developer")


class Conversations:
    """Which session continues an unnamed conversation: hash of its messages → session id."""

    def __init__(self, limit: int = MAX_CONVERSATIONS) -> None:
        self._limit = limit
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def find(self, uid: int, messages: list[tuple[str, str]]) -> str | None:
        return self._sessions.get(_key(uid, messages))

    def remember(self, uid: int, messages: list[tuple[str, str]], session_id: str) -> None:
        key = _key(uid, messages)
        self._sessions[key] = session_id
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)


def _key(uid: int, messages: list[tuple[str, str]]) -> str:
    conversation = [(role, text) for role, text in messages if role not in _SYSTEM_ROLES]
    return hashlib.sha256(json.dumps([uid, conversation]).encode()).hexdigest()


CONVERSATIONS = web.AppKey("conversations", Conversations)


async def models(request: web.Request) -> web.Response:
    created = int(time.time())
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "agentd"}
                for name in request.app[MODELS]
            ],
        }
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    messages = _messages(body.get("messages"))
    bridge = request.app[BRIDGE]
    caller = peer(request)
    conversations = request.app[CONVERSATIONS]
    args = _chat_args(body, messages)
    named = request.headers.get(SESSION_HEADER) or body.get("user")
    if named is not None and not isinstance(named, str):
        raise HttpError(ErrorCode.BAD_REQUEST, "user must be a string")
    if named:
        args["session"] = named
    else:
        known = conversations.find(caller.uid, messages[:-1])
        if known is not None:
            args["session"] = known
        else:
            _start_session(args, messages, None)
    stream = body.get("stream") is True
    completion = Completion(request, str(body.get("model") or DEFAULT_MODEL), stream, body)
    reply = await bridge.call(caller, "chat", args, completion.emit)
    if named and _not_found(reply):  # the first chat of a named conversation
        del args["session"]
        _start_session(args, messages, named)
        reply = await bridge.call(caller, "chat", args, completion.emit)
    if not reply.get("ok"):
        return await completion.failed(reply["error"])
    result = reply["result"]
    if not named:
        answered = [*messages, ("assistant", result["answer"])]
        conversations.remember(caller.uid, answered, result["session_id"])
    return await completion.answered(result)


def _messages(raw: Any) -> list[tuple[str, str]]:
    """(role, text) of each message; content parts other than text are refused."""
    if not isinstance(raw, list) or not raw:
        raise HttpError(ErrorCode.BAD_REQUEST, "messages must be a non-empty list")
    out: list[tuple[str, str]] = []
    for message in raw:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise HttpError(ErrorCode.BAD_REQUEST, "each message needs a role and content")
        out.append((message["role"], _text(message.get("content"))))
    if out[-1][0] != "user":
        raise HttpError(ErrorCode.BAD_REQUEST, "the last message must be the user's")
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HttpError(ErrorCode.BAD_REQUEST, "only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise HttpError(ErrorCode.BAD_REQUEST, "message content must be a string or text parts")


def _chat_args(body: dict[str, Any], messages: list[tuple[str, str]]) -> dict[str, Any]:
    args: dict[str, Any] = {"message": messages[-1][1], "stream": body.get("stream") is True}
    model = body.get("model")
    if model not in (None, "", DEFAULT_MODEL):
        if not isinstance(model, str):
            raise HttpError(ErrorCode.BAD_REQUEST, "model must be a string")
        args["model"] = model  # held to [model_policy] as agentctl chat --model is
    return args


def _start_session(args: dict[str, Any], messages: list[tuple[str, str]], name: str | None) -> None:
    args["new_session"] = True
    if name is not None:
        args["session_name"] = name
    system = [text for role, text in messages if role in _SYSTEM_ROLES]
    if system:
        args["system_prompt"] = "\n\n".join(system)


def _not_found(reply: dict[str, Any]) -> bool:
    return not reply.get("ok") and reply["error"].get("code") == ErrorCode.NOT_FOUND


class Completion:
    """One completion's response: a JSON body, or SSE chunks started by the first text."""

    def __init__(
        self, request: web.Request, model: str, stream: bool, body: dict[str, Any]
    ) -> None:
        self._request = request
        self._model = model
        self._stream = stream
        options = body.get("stream_options")
        self._usage = isinstance(options, dict) and options.get("include_usage") is True
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._created = int(time.time())
        self._response: web.StreamResponse | None = None

    async def emit(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "chunk" and self._stream and fields.get("text"):
            await self._send(self._chunk({"content": fields["text"]}, None))

    async def failed(self, error: dict[str, Any]) -> web.StreamResponse:
        if self._response is None:
            return error_response(error)
        # Headers went out with 200: OpenAI's clients raise on an event carrying "error".
        await self._event({"error": {**error, "type": str(error.get("code", "")).lower()}})
        return await self._done()

    async def answered(self, result: dict[str, Any]) -> web.StreamResponse:
        self._model = result.get("model") or self._model
        usage = {
            "prompt_tokens": result["tokens_in"],
            "completion_tokens": result["tokens_out"],
            "total_tokens": result["tokens_in"] + result["tokens_out"],
        }
        headers = {
            SESSION_HEADER: result["session_id"],
            "X-Agentd-Request-Id": result["request_id"],
        }
        if not self._stream:
            return web.json_response(
                {
                    "id": self._id,
                    "object": "chat.completion",
                    "created": self._created,
                    "model": self._model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result["answer"]},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": None,
                },
                headers=headers,
            )
        if self._response is None:  # nothing streamed (an empty or non-streamed answer)
            await self._send(self._chunk({"content": result["answer"]}, None), headers)
        await self._event(self._chunk({}, "stop"))
        if self._usage:
            await self._event({**self._chunk({}, None), "choices": [], "usage": usage})
        return await self._done()

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    async def _send(self, chunk: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        if self._response is None:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **(headers or {}),
                }
            )
            await response.prepare(self._request)
            self._response = response
            first = self._chunk({"role": "assistant", "content": ""}, None)
            await self._event(first)
        await self._event(chunk)

    async def _event(self, data: dict[str, Any]) -> None:
        assert self._response is not None
        await self._response.write(b"data: " + json.dumps(data).encode() + b"\n\n")

    async def _done(self) -> web.StreamResponse:
        assert self._response is not None
        await self._response.write(b"data: [DONE]\n\n")
        await self._response.write_eof()
        return self._response
