"""The forms of an export: exact JSON lines (what `import` reads back) and Markdown for people.

Both take the daemon's `export` events (a `session` event, then `messages`
events whose long messages come in pieces) through `joined`.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import IO, Any

from agentctl.output import visible, visible_body

FORMAT = "agentd-export"
VERSION = 1


def joined(
    on_session: Callable[[dict[str, Any]], None], on_message: Callable[[dict[str, Any]], None]
) -> Callable[[dict[str, Any]], None]:
    """An event handler that hands on sessions and whole messages (joined from pieces)."""
    pieces: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "session":
            on_session(event["session"])
        elif event.get("event") == "messages":
            for piece in event["messages"]:
                pieces.append(piece["content"])
                if not piece.get("more"):
                    whole = {**piece, "content": "".join(pieces), "session": event["session_id"]}
                    whole.pop("more", None)
                    pieces.clear()
                    on_message(whole)

    return on_event


class JsonLines:
    """The exact form: one JSON object a line, as `import` reads it back."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def _line(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

    def start(self) -> None:
        self._line({"type": FORMAT, "version": VERSION, "exported_at": time.time()})

    def session(self, session: dict[str, Any]) -> None:
        self._line({"type": "session", **session})

    def message(self, message: dict[str, Any]) -> None:
        # Tool calls are not stored yet; the field is there for when they are.
        self._line({"type": "message", **message, "tool_calls": message.get("tool_calls", [])})


class Markdown:
    """For people: a heading per session and per message; escaped on a terminal."""

    def __init__(self, out: IO[bytes], terminal: bool) -> None:
        self._out = out
        self._terminal = terminal

    def _write(self, text: str) -> None:
        self._out.write(text.encode("utf-8"))

    def _name(self, text: str) -> str:
        return visible(text) if self._terminal else text

    def _body(self, text: str) -> str:
        return visible_body(text) if self._terminal else text

    def start(self) -> None:
        self._write(f"<!-- agentd export, {_when(time.time())} -->\n")

    def session(self, s: dict[str, Any]) -> None:
        title = self._name(s["name"]) if s.get("name") else s["id"]
        self._write(f"\n# {title}\n\n- id: `{s['id']}`\n- owner uid: {s['owner_uid']}\n")
        self._write(f"- created: {_when(s['created_at'])}\n- turns: {s['turns']}\n")
        if s.get("system_prompt"):
            self._write(f"\n**System prompt:**\n\n{self._body(s['system_prompt'])}\n")

    def message(self, m: dict[str, Any]) -> None:
        who = "you" if m["role"] == "user" else self._name(m.get("model") or "model")
        status = "" if m["status"] in ("answered", "complete") else f" [{self._name(m['status'])}]"
        self._write(f"\n## {who} · {_when(m['created_at'])}{status}\n\n")
        self._write(self._body(m["content"]) + "\n")


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
