"""One client connection: frames in, replies out, one request at a time.

An asyncio Protocol rather than streams: a `status` is parsed, answered and
written inside one `data_received` call, with no task, no timeout context and
no `drain()` per request (see docs/performance.md). Requests whose handler
waits (chat, SQL, log follow) run as a task; frames that arrive meanwhile
wait in the buffer and are served in turn.

    idle ──frame complete──▶ answer now ──────────────▶ idle
      │                      └─ handler waits: task ──▶ idle (reply sent)
      └─ partial frame: must complete within frame_timeout_s
    idle longer than idle_timeout_s, or a frame never finished: closed

Flow control: while the client does not read its replies (the transport
pauses writing) no further request is served, and reading pauses once the
buffer holds a whole frame's worth, so a client cannot make us queue
unbounded replies or requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from agentd.access import Peer, peer_credentials
from agentd.commands import Emit
from agentd.config import DaemonSettings
from agentd.dispatch import Dispatcher
from agentd.protocol import (
    HEADER,
    ErrorCode,
    ProtocolError,
    Request,
    decode_body,
    encode_frame,
    error_reply,
    event,
    frame_length,
    parse_request,
    request_id_of,
)
from agentd.tools.approvals import APPROVAL_COMMAND, Approvals

if TYPE_CHECKING:
    from agentd.server import Server

logger = logging.getLogger(__name__)


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: Server, settings: DaemonSettings, dispatcher: Dispatcher) -> None:
        self._server = server
        self._settings = settings
        self._dispatcher = dispatcher
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer = Peer(pid=0, uid=-1, gid=-1)
        self._buffer = bytearray()
        self._request: asyncio.Task[dict[str, Any]] | None = None  # the handler that waits
        self._long_running = False  # the waiting handler ends when the client hangs up
        self._approvals: Approvals | None = None  # a waiting chat's answers from its peer
        self._eof = False  # the client sent end-of-file: finish the current request, then close
        self._closed = False
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._since = self._loop.time()  # start of the current wait for a frame
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # The kernel's word on who is calling, before anything else: the connection
        # limits are per uid. (getsockopt cannot fail on a connected Unix socket.)
        self._peer = peer_credentials(transport.get_extra_info("socket"))
        refusal = self._server.admit(self, self._peer)
        if refusal is not None:
            self._send(error_reply(None, ErrorCode.BUSY, refusal))
            self._close()
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        started_frame = not self._buffer
        self._buffer += data
        if started_frame:
            self._since = self._loop.time()
        if self._approvals is not None:
            self._take_approvals(self._approvals)
        self._serve_buffered()

    def eof_received(self) -> bool:
        self._eof = True
        if self._request is None:
            return False  # nothing owed: let the transport close
        if self._long_running:
            # A client does not send while it waits for its reply, so end-of-file
            # means it is gone; a chat must not keep the model busy for nobody.
            logger.info("client hung up: cancelling its request")
            self._request.cancel()
        return True  # keep the write side open for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.forget(self, self._peer)  # its slot goes back, however it ended
        self._cancel_timer()
        if self._approvals is not None:
            self._approvals.close()  # an open question is a denial
        if self._request is not None and self._long_running:
            self._request.cancel()
        self._wake_writers()  # an emit waiting to write finds the connection closed

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writers()
        self._serve_buffered()

    # -- for the server ------------------------------------------------------------------

    async def close(self) -> None:
        """Cut the connection: cancel a waiting request and wait for it to end."""
        request = self._request
        if request is not None:
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
        self._close()

    # -- requests ------------------------------------------------------------------------

    def _serve_buffered(self) -> None:
        """Serve the complete frames in the buffer, in turn, while we may."""
        buffer = self._buffer
        served = False
        while self._request is None and self._writable is None and not self._closed:
            if len(buffer) < HEADER.size:
                break
            try:
                length = frame_length(buffer, self._settings.max_frame_bytes)
            except ProtocolError as exc:  # the stream can no longer be trusted
                self._server.count_protocol_error()
                self._send(error_reply(None, exc.code, exc.message))
                self._close()
                return
            end = HEADER.size + length
            if len(buffer) < end:
                break
            body = bytes(buffer[HEADER.size : end])
            del buffer[:end]
            self._serve_frame(body)
            served = True
        if served:
            self._since = self._loop.time()  # the wait for the next frame starts now
        self._after_serving()

    def _serve_frame(self, body: bytes) -> None:
        message: Any = None
        try:
            message = decode_body(body)
            request = parse_request(message)
        except ProtocolError as exc:
            self._server.count_protocol_error()
            self._send(error_reply(request_id_of(message), exc.code, exc.message))
            return
        if request.cmd == APPROVAL_COMMAND:
            # Never answered: late (its chat is over) or from a connection that has no
            # question waiting; an answer here would read as the next request's reply.
            logger.info("an approval for no waiting question was dropped")
            return
        reply = self._dispatcher.answer_now(request, self._peer)
        if reply is not None:
            self._send(reply)
            return
        self._start_waiting_request(request)

    def _take_approvals(self, approvals: Approvals) -> None:
        """While a chat waits, the tool_approval frames at the head of the buffer are
        its peer's answers: delivered now, never queued behind the chat. Any other
        frame stops the scan and waits its turn, as before."""
        buffer = self._buffer
        while len(buffer) >= HEADER.size:
            try:
                end = HEADER.size + frame_length(buffer, self._settings.max_frame_bytes)
                if len(buffer) < end:
                    return
                request = parse_request(decode_body(bytes(buffer[HEADER.size : end])))
            except ProtocolError:
                return  # refused in turn, once the chat is answered
            if request.cmd != APPROVAL_COMMAND:
                return
            del buffer[:end]
            if not approvals.deliver(request.args):
                logger.info("an approval for no waiting question was dropped")

    def _start_waiting_request(self, request: Request) -> None:
        spec = self._dispatcher.spec(request.cmd)  # None: unknown, refused by dispatch
        self._long_running = spec is not None and spec.long_running
        must_finish = spec is not None and spec.drained  # a chat, not a log follow
        if spec is not None and spec.name == "chat":
            self._approvals = Approvals()
        handling = self._dispatcher.handle(
            request, self._peer, self._emit_for(request.id), self._approvals
        )
        self._request = self._loop.create_task(handling)
        if must_finish:
            self._server.begin_finishing()
        self._request.add_done_callback(lambda task: self._finish_request(task, must_finish))

    def _finish_request(self, task: asyncio.Task[dict[str, Any]], must_finish: bool) -> None:
        self._request = None
        self._long_running = False
        self._approvals = None
        if must_finish:
            self._server.end_finishing()
        # Cancelled: the client left or the daemon stops, so there is no reply to
        # send; the connection still moves on (and closes, after end-of-file).
        if not task.cancelled():
            failure = task.exception()
            if failure is not None:  # dispatch answers every error; this is a bug in it
                logger.error("request handling failed", exc_info=failure)
                self._close()
                return
            self._send(task.result())
        self._since = self._loop.time()
        self._serve_buffered()

    def _emit_for(self, wire_id: int | str) -> Emit:
        async def emit(kind: str, fields: dict[str, Any], rid: int | str = wire_id) -> None:
            if self._closed:
                raise ConnectionResetError("connection lost")
            self._send(event(rid, kind, **fields))
            if self._writable is not None:
                await asyncio.shield(self._writable)
                if self._closed:
                    raise ConnectionResetError("connection lost")

        return emit

    def _after_serving(self) -> None:
        """Close after end-of-file once nothing is owed; pace reading; re-arm the timer."""
        if self._closed:
            return
        if self._eof and self._request is None:
            self._close()
            return
        self._pace_reading()
        self._arm_timer()

    def _pace_reading(self) -> None:
        assert self._transport is not None
        if len(self._buffer) > HEADER.size + self._settings.max_frame_bytes:
            self._transport.pause_reading()
        elif not self._transport.is_reading():
            self._transport.resume_reading()  # a no-op on a closing transport

    # -- timeouts ------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if self._request is not None:
            return None  # the handler owns the time (chat deadlines, log follow)
        if self._buffer and self._writable is None:
            return self._since + self._settings.frame_timeout_s
        return self._since + self._settings.idle_timeout_s

    def _arm_timer(self) -> None:
        """Make sure a timer fires by the deadline. An active connection moves its
        deadline forward with every request; the timer then fires once, finds the
        deadline later and re-arms, so a request costs no timer operations."""
        deadline = self._deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        self._cancel_timer()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        deadline = self._deadline()
        if deadline is None or self._closed:
            return
        if self._loop.time() >= deadline:
            # abort, not close: a client that stopped reading would keep close() waiting.
            assert self._transport is not None
            self._transport.abort()
            return
        self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")

    # -- output --------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_frame(message))

    def _close(self) -> None:
        """Close after what was written is flushed; nothing more is served."""
        self._closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _wake_writers(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
