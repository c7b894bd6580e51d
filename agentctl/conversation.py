"""agentctl chat, sessions, history: talking to the agent, from a terminal or a pipe.

How a prompt is made: MESSAGE alone; stdin alone (when stdin is not a
terminal); or both, MESSAGE first as the instruction, then a blank line, then
stdin (`cat notes.txt | agentctl chat "summarize"`). The answer goes to
stdout as it arrives; notices and errors go to stderr.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

import click

from agentctl import exits
from agentctl.cli import fail, json_option, options
from agentctl.output import print_json, print_table, style

CHAT_TIMEOUT_S = 600.0  # above the daemon's own deadline, so the daemon decides


@click.command()
@click.argument("message", required=False)
@click.option(
    "-s", "--session", "session_ref", metavar="NAME|ID", help="Use this session for this message."
)
@click.option(
    "--new-session",
    "new_session",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Start a new session (optionally named) and make it current.",
)
@click.option("--system", "system_prompt", metavar="TEXT", help="System prompt of the new session.")
@click.option(
    "--no-stream", is_flag=True, help="Print the answer once complete instead of as it arrives."
)
@click.option("--model", metavar="NAME", help="Ask this model (if [model_policy] allows your role).")
@click.option(
    "--allow-secrets",
    is_flag=True,
    help="Send credentials found in this message as they are, where [secrets_scan] permits it.",
)
@json_option
def chat(
    message: str | None,
    session_ref: str | None,
    new_session: str | None,
    system_prompt: str | None,
    no_stream: bool,
    model: str | None,
    allow_secrets: bool,
) -> None:
    """Ask the agent. Exit 5 when the answer is degraded (not from the model)."""
    opts = options()
    prompt = compose_prompt(message, sys.stdin)
    if system_prompt is not None and new_session is None:
        fail("--system goes with --new-session", exits.USAGE)
    args: dict[str, Any] = {"message": prompt, "stream": not (no_stream or opts.json)}
    if session_ref:
        args["session"] = session_ref
    args.update(_governance_args(model, allow_secrets))
    if new_session is not None:
        args["new_session"] = True
        if new_session:
            args["session_name"] = new_session
        if system_prompt is not None:
            args["system_prompt"] = system_prompt
    streamed: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "chunk":
            text = str(event.get("text", ""))
            streamed.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()

    with opts.client(timeout=CHAT_TIMEOUT_S) as client:
        result = client.call("chat", args, on_event=on_event)
    _print_answer(result, streamed, as_json=opts.json)
    sys.exit(exits.DEGRADED if result.get("degraded") else exits.OK)


def _governance_args(model: str | None, allow_secrets: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"model": model} if model else {}
    if allow_secrets:
        args["allow_secrets"] = True
    return args


def compose_prompt(message: str | None, stdin: Any) -> str:
    piped = "" if stdin is None or stdin.isatty() else _read_stdin(stdin)
    parts = [p for p in (message, piped) if p and p.strip()]
    if not parts:
        fail("nothing to send: give a MESSAGE or pipe text on stdin", exits.USAGE)
    return "\n\n".join(parts)


def _read_stdin(stdin: Any) -> str:
    data: bytes = stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"stdin is not valid UTF-8 (byte {exc.start}); nothing was sent", exits.USAGE)


def _print_answer(result: dict[str, Any], streamed: list[str], *, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    text = "".join(streamed) if streamed else str(result.get("answer", ""))
    if not streamed:
        sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if result.get("notice"):
        click.echo(f"agentctl: note: {result['notice']}", err=True)
    _print_governance(result)
    if result.get("degraded"):
        click.echo(
            style("agentctl: degraded answer: not from the model (exit 5)", fg="yellow"), err=True
        )


def _print_governance(result: dict[str, Any]) -> None:
    """Secrets replaced before sending, and a budget nearing its cap: on stderr."""
    redacted = result.get("redacted") or {}
    if redacted:
        total = sum(redacted.values())
        kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(redacted.items()))
        click.echo(
            f"agentctl: note: {total} secret{'s' if total != 1 else ''} redacted before sending ({kinds})",
            err=True,
        )
    if result.get("budget_warning"):
        click.echo(style(f"agentctl: warning: {result['budget_warning']}", fg="yellow"), err=True)


@click.group(invoke_without_command=True)
@click.option("-n", "--limit", default=100, show_default=True, help="Most recent sessions to list.")
@json_option
@click.pass_context
def sessions(ctx: click.Context, limit: int) -> None:
    """List sessions (id, name, turns, last used); subcommands create, switch and delete."""
    if ctx.invoked_subcommand is not None:
        return
    opts = options()
    result = opts.client().call("sessions", {"limit": limit})
    if opts.json:
        print_json(result)
        return
    rows = [
        [
            ("* " if s["current"] else "  ") + s["id"],
            s["name"] or "",
            str(s["turns"]),
            _when(s["last_used_at"]),
        ]
        for s in result["sessions"]
    ]
    print_table(["  ID", "NAME", "TURNS", "LAST USED"], rows)


@sessions.command("new")
@click.argument("name", required=False)
@click.option("--system", "system_prompt", metavar="TEXT", help="The session's own system prompt.")
@json_option
def sessions_new(name: str | None, system_prompt: str | None) -> None:
    """Start a new session and make it current."""
    args = {k: v for k, v in (("name", name), ("system_prompt", system_prompt)) if v is not None}
    _show_session(options().client().call("session_new", args), "current session")


@sessions.command("use")
@click.argument("session_ref", metavar="NAME|ID")
@json_option
def sessions_use(session_ref: str) -> None:
    """Make a session the current one."""
    _show_session(
        options().client().call("session_use", {"session": session_ref}), "current session"
    )


@sessions.command("delete")
@click.argument("session_ref", metavar="NAME|ID")
@json_option
def sessions_delete(session_ref: str) -> None:
    """Delete a session and its messages (admin)."""
    opts = options()
    result = opts.client().call("session_delete", {"session": session_ref})
    if opts.json:
        print_json(result)
    else:
        click.echo(f"deleted {result['deleted']}; current session {result['current']}")


def _show_session(result: dict[str, Any], label: str) -> None:
    opts = options()
    if opts.json:
        print_json(result)
        return
    s = result["session"]
    click.echo(f"{label}: {s['id']}" + (f" ({s['name']})" if s.get("name") else ""))


@click.command()
@click.argument("session_ref", metavar="[SESSION]", required=False)
@click.option("-n", "--limit", default=100, show_default=True, help="Most recent messages to show.")
@json_option
def history(session_ref: str | None, limit: int) -> None:
    """Show a session's messages (the current session by default)."""
    opts = options()
    args: dict[str, Any] = {"limit": limit}
    if session_ref:
        args["session"] = session_ref
    result = opts.client().call("history", args)
    if opts.json:
        print_json(result)
        return
    s = result["session"]
    click.echo(
        style(
            f"session {s['id']}"
            + (f" ({s['name']})" if s.get("name") else "")
            + f", {s['turns']} turns",
            bold=True,
        )
    )
    for m in result["messages"]:
        status = "" if m["status"] in ("answered", "complete") else f" [{m['status']}]"
        who = "you" if m["role"] == "user" else (m.get("model") or "model")
        click.echo(
            style(
                f"\n{who} · {_when(m['created_at'])}{status}",
                fg="cyan" if m["role"] == "user" else "green",
            )
        )
        click.echo(m["content"])


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def register(group: click.Group) -> None:
    for command in (chat, sessions, history):
        group.add_command(command)
