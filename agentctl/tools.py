"""agentctl tools, and the question a chat asks before a tool call runs.

`tools` lists the configured MCP servers (state, tools, last error) and each
tool's policy. `ToolApprover` answers a chat's `tool_request` events: at a
terminal it asks, in a pipe it denies unless `--approve TOOL` pre-approved
the tool. The daemon takes nothing else as a yes (docs/tools.md).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click

from agentctl.context import json_option, show
from agentctl.output import print_table, style, visible

PROMPT = "Allow? [y]es / [n]o / [a]lways in this session "
_ANSWERS = {"y": "yes", "yes": "yes", "n": "no", "no": "no", "a": "always", "always": "always"}


@click.command()
@json_option
def tools() -> None:
    """List the tool servers (state, tools, last error) and each tool's policy."""
    show("tools", _print_tools)


def _print_tools(result: dict[str, Any]) -> None:
    servers = result.get("servers") or []
    if not servers:
        click.echo("no tool servers are configured ([[tools.servers]] in agentd.toml)")
        return
    rows = [
        [
            visible(s["name"]),
            s["state"],
            str(len(s["tools"])),
            str(s["restarts"]),
            visible(s.get("last_error") or "-"),
        ]
        for s in servers
    ]
    print_table(["SERVER", "STATE", "TOOLS", "RESTARTS", "LAST ERROR"], rows)
    click.echo()
    tool_rows = [
        [visible(t["name"]), visible(s["name"]), t["policy"]] for s in servers for t in s["tools"]
    ]
    if tool_rows:
        print_table(["TOOL", "SERVER", "POLICY"], tool_rows)


class ToolApprover:
    """Answers tool_request events: --approve'd tools, else the terminal, else no."""

    def __init__(self, approved: tuple[str, ...], terminal: TextIO | None) -> None:
        self._approved = set(approved)
        self._terminal = terminal  # None: no one to ask (a pipe)

    def answer(self, event: dict[str, Any]) -> str:
        tool = str(event.get("tool", ""))
        if tool in self._approved:
            return "yes"
        self._describe(event)
        if self._terminal is None:
            click.echo(
                f"agentctl: denied {visible(tool)} (not a terminal; --approve {visible(tool)} "
                "allows it)",
                err=True,
            )
            return "no"
        click.echo(PROMPT, nl=False, err=True)
        said = self._terminal.readline().strip().lower()
        answer = _ANSWERS.get(said, "no")
        if answer == "always":
            self._approved.add(tool)
        return answer

    def _describe(self, event: dict[str, Any]) -> None:
        arguments = json.dumps(event.get("arguments"), ensure_ascii=False, sort_keys=True)
        click.echo(
            style(
                f"agentctl: the model asks to call {visible(str(event.get('tool')))} "
                f"on server {visible(str(event.get('server')))}",
                fg="yellow",
            ),
            err=True,
        )
        click.echo(f"  arguments: {visible(arguments)}", err=True)


def approver_for(approved: tuple[str, ...]) -> ToolApprover:
    """Ask on a terminal (stdin and stderr both one); otherwise answer from --approve alone."""
    terminal = sys.stdin if sys.stdin.isatty() and sys.stderr.isatty() else None
    return ToolApprover(approved, terminal)
