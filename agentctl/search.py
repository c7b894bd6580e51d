"""agentctl search: full-text search over your conversations, with highlighted snippets.

Matches are bold and coloured on a terminal (unless NO_COLOR), marked [like
this] in a pipe. Snippets are text from others: always shown escaped.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import click

from agentctl.context import json_option, options
from agentctl.output import print_json, style, use_colour, visible

_SPACES = re.compile(r"\s+")


@click.command()
@click.argument("words", nargs=-1, required=True, metavar="QUERY...")
@click.option("-s", "--session", "session_ref", metavar="NAME|ID", help="Search this session only.")
@click.option("-n", "--limit", default=20, show_default=True, help="Most results to show.")
@click.option("--all", "everyone", is_flag=True, help="Every user's sessions (admin).")
@click.option("--raw", is_flag=True, help="QUERY is FTS5 syntax (AND, OR, NEAR, prefix*...).")
@json_option
def search(
    words: tuple[str, ...], session_ref: str | None, limit: int, everyone: bool, raw: bool
) -> None:
    """Find messages containing every word of QUERY, best matches first."""
    opts = options()
    args: dict[str, Any] = {"query": " ".join(words), "limit": limit}
    for key, value in (("session", session_ref), ("all", everyone or None), ("raw", raw or None)):
        if value is not None:
            args[key] = value
    result = opts.client().call("search", args)
    if opts.json:
        print_json(result)
        return
    colour = use_colour()
    for hit in result["results"]:
        click.echo(style(_heading(hit), fg="cyan"))
        click.echo("  " + "".join(_segment(s["text"], s["match"], colour) for s in hit["snippet"]))
    if not result["results"]:
        click.echo("no matches", err=True)


def _heading(hit: dict[str, Any]) -> str:
    session = visible(hit["session_name"]) if hit.get("session_name") else hit["session_id"]
    when = datetime.datetime.fromtimestamp(hit["created_at"]).strftime("%Y-%m-%d %H:%M")
    return f"{session} · {hit['role']} · {when} · message {hit['message_id']}"


def _segment(text: str, match: bool, colour: bool) -> str:
    shown = visible(_SPACES.sub(" ", text))
    if not match:
        return shown
    return click.style(shown, bold=True, fg="yellow") if colour else f"[{shown}]"
