"""Approvals: a chat's questions to its peer, and the answers that come back.

    daemon ── event tool_request {request, tool, server, arguments} ──▶ client
    daemon ◀── frame {cmd: "tool_approval", args: {request, answer}} ── client
              (the SAME connection, while the chat waits: so the SAME peer)

One `Approvals` per waiting chat request, made by the connection, which hands
it every tool_approval frame that arrives while the request runs. An answer
to a question nobody asked (or no longer waits for) is dropped. Everything
that is not a clear yes is a no: a timeout, the connection gone, a stray word.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

from agentd.providers.base import ToolCall

logger = logging.getLogger(__name__)

APPROVAL_COMMAND: Final = "tool_approval"
ANSWERS: Final = frozenset({"yes", "no", "always"})


class Verdict(NamedTuple):
    """An answer: yes, no, always (this session), timeout or disconnected; and by whom."""

    answer: str
    decided_by: str


Approver = Callable[[ToolCall, str], Awaitable[Verdict]]
"""Asks the chatting peer about one `ask` call on server `str`."""

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class Approvals:
    """Questions waiting for an answer from this connection's peer."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._closed = False

    def ask(self) -> tuple[str, asyncio.Future[str]]:
        """A new question's id and the future its answer lands in."""
        request_id = f"t-{secrets.token_hex(6)}"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_result("disconnected")
        self._waiting[request_id] = future
        return request_id, future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def deliver(self, args: dict[str, Any]) -> bool:
        """An approval frame's args; False when nobody waits for that request."""
        future = self._waiting.get(str(args.get("request")))
        if future is None or future.done():
            return False
        answer = args.get("answer")
        # Any other answer, of any type (a peer sends what it likes), is a denial.
        future.set_result(answer if isinstance(answer, str) and answer in ANSWERS else "no")
        return True

    def close(self) -> None:
        """The peer is gone: every open question is answered `disconnected` (a denial)."""
        self._closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result("disconnected")


def peer_approver(approvals: Approvals, emit: Emit, uid: int, timeout_s: float) -> Approver:
    """Ask the chatting peer itself: a tool_request event, then its answer or a denial."""

    async def approve(call: ToolCall, server: str) -> Verdict:
        request_id, answer = approvals.ask()
        try:
            await emit(
                "tool_request",
                {
                    "request": request_id,
                    "tool": call.name,
                    "server": server,
                    "arguments": call.args,
                },
            )
            async with asyncio.timeout(timeout_s):
                said = await answer
        except TimeoutError:
            return Verdict("timeout", "timeout")
        except ConnectionError:
            return Verdict("disconnected", "agentd")
        finally:
            approvals.forget(request_id)
        return Verdict(said, "agentd" if said == "disconnected" else f"uid {uid}")

    return approve
