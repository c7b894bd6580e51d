"""agentctl chat, sessions, history: talking to the agent, from a terminal or a pipe.

How a prompt is made: MESSAGE alone; stdin alone (when stdin is not a
terminal); or both, MESSAGE first as the instruction, then a blank line, then
stdin (`cat notes.txt | agentctl chat "summarize"`). The answer goes to
stdout as it arrives; notices and errors go to stderr.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any

import click

from agentctl import exits
from agentctl.client import Client
from agentctl.context import fail, json_option, options
from agentctl.output import for_terminal, print_json, print_table, style, visible
from agentctl.since import parse_since
from agentctl.tools import approver_for

CHAT_TIMEOUT_S = 600.0  # above the daemon's own deadline, so the daemon decides
# Prompts above this ask the daemon for its limits first (below the smallest sane limit).
CHECK_LIMITS_ABOVE = 64 * 1024
FRAME_ROOM = 4096  # what a chat request holds beside the prompt (names, system prompt)


@click.command()
@click.argument("message", required=False)
@click.option(
    "-s", "--session", "session_ref", metavar="NAME|ID", help="Use this session for this message."
)
@click.option("--new-session", is_flag=True, help="Start a new session and make it current.")
@click.option("--name", "session_name", metavar="NAME", help="Name of the new session.")
@click.option("--system", "system_prompt", metavar="TEXT", help="System prompt of the new session.")
@click.option(
    "--no-stream", is_flag=True, help="Print the answer once complete instead of as it arrives."
)
@click.option(
    "--model", metavar="NAME", help="Ask this model (if [model_policy] allows your role)."
)
@click.option(
    "--allow-secrets",
    is_flag=True,
    help="Send credentials found in this message as they are, where [secrets_scan] permits it.",
)
@click.option(
    "--approve",
    "approve",
    metavar="TOOL",
    multiple=True,
    help="Allow the model to call TOOL without asking (repeatable); in a pipe, the only yes.",
)
@json_option
def chat(
    message: str | None,
    session_ref: str | None,
    new_session: bool,
    session_name: str | None,
    system_prompt: str | None,
    no_stream: bool,
    model: str | None,
    allow_secrets: bool,
    approve: tuple[str, ...],
) -> None:
    """Ask the agent. Exit 5 when the answer is degraded (not from the model)."""
    opts = options()
    for option, value in (("--name", session_name), ("--system", system_prompt)):
        if value is not None and not new_session:
            fail(f"{option} goes with --new-session", exits.USAGE)
    for what, text in (
        ("MESSAGE", message),
        ("--session", session_ref),
        ("--name", session_name),
        ("--system", system_prompt),
    ):
        require_utf8(what, text)
    prompt = compose_prompt(message, sys.stdin)
    args: dict[str, Any] = {"message": prompt, "stream": not (no_stream or opts.json)}
    if session_ref:
        args["session"] = session_ref
    args.update(_governance_args(model, allow_secrets))
    if new_session:
        args["new_session"] = True
        if session_name is not None:
            args["session_name"] = session_name
        if system_prompt is not None:
            args["system_prompt"] = system_prompt
    streamed: list[str] = []
    approver = approver_for(approve)
    client = opts.client(timeout=CHAT_TIMEOUT_S)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "chunk":
            text = str(event.get("text", ""))
            streamed.append(text)
            sys.stdout.write(for_terminal(text))
            sys.stdout.flush()
        elif event.get("event") == "wait":
            _show_wait(event)
        elif event.get("event") == "tool_request":
            client.send_approval(str(event.get("request")), approver.answer(event))

    with client:
        check_prompt_size(client, prompt)
        result = client.call("chat", args, on_event=on_event)
    _print_answer(result, streamed, as_json=opts.json)
    sys.exit(exits.DEGRADED if result.get("degraded") else exits.OK)


def require_utf8(what: str, text: str | None) -> None:
    """Arguments arrive as the bytes the shell passed: Python keeps bytes that are not
    UTF-8 as surrogates, which the wire cannot carry. Refuse them here, in one line."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        fail(f"{what} is not valid UTF-8 (character {exc.start}); nothing was sent", exits.USAGE)


def check_prompt_size(client: Client, prompt: str) -> None:
    """Refuse a prompt the daemon would refuse, before sending megabytes it would not read.

    Small prompts go straight out (the daemon checks them anyway); a large one
    costs one `ping` on the same connection for the daemon's limits.
    """
    size = len(prompt.encode("utf-8"))
    if size <= CHECK_LIMITS_ABOVE:
        return
    limits = client.limits()
    if limits is None:
        return  # an older daemon: its FRAME_TOO_LARGE reply is read instead
    for limit, key in (
        (limits.max_prompt_bytes, "chat.max_prompt_bytes"),
        (limits.max_frame_bytes - FRAME_ROOM, "daemon.max_frame_bytes"),
    ):
        if size > limit:
            fail(
                f"the prompt is {size} bytes; the limit is {limit} ({key}); nothing was sent",
                exits.USAGE,
            )


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


def _show_wait(event: dict[str, Any]) -> None:
    """On a terminal, say why the answer is late (a script's stderr stays quiet)."""
    if not sys.stderr.isatty():
        return
    message = "".join(c if c.isprintable() else "?" for c in str(event.get("message", "")))
    seconds = float(event.get("seconds") or 0)
    click.echo(style(f"agentctl: waiting {seconds:.0f}s: {message}", fg="yellow"), err=True)


# What an exit-5 answer is, by its status (the daemon's AnswerStatus).
_NOT_COMPLETE = {
    "incomplete": "incomplete answer: the model's text, cut short",
    "truncated": "truncated answer: the model's text, cut at chat.max_answer_bytes",
    "empty": "no answer: the model produced no text",
}


def _print_answer(result: dict[str, Any], streamed: list[str], *, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    text = "".join(streamed) if streamed else str(result.get("answer", ""))
    if not streamed:
        sys.stdout.write(for_terminal(text))
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if result.get("notice"):
        click.echo(f"agentctl: note: {visible(str(result['notice']))}", err=True)
    _print_governance(result)
    if result.get("degraded"):
        what = _NOT_COMPLETE.get(str(result.get("status")), "degraded answer: not from the model")
        click.echo(style(f"agentctl: {what} (exit 5)", fg="yellow"), err=True)


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
@click.option("--all", "everyone", is_flag=True, help="Every user's sessions (admin).")
@click.option("--user", metavar="UID|NAME", help="This user's sessions (admin, unless your own).")
@json_option
@click.pass_context
def sessions(ctx: click.Context, limit: int, everyone: bool, user: str | None) -> None:
    """List your sessions (id, name, turns, last used); subcommands create, switch and delete."""
    if ctx.invoked_subcommand is not None:
        return
    opts = options()
    args: dict[str, Any] = {"limit": limit}
    if everyone:
        args["all"] = True
    if user is not None:
        args["user"] = user
    result = opts.client().call("sessions", args)
    if opts.json:
        print_json(result)
        return
    owners = everyone or user is not None
    rows = [
        [
            ("* " if s["current"] else "  ") + s["id"],
            *([str(s["owner_uid"])] if owners else []),
            s["name"] or "",
            str(s["turns"]),
            _when(s["last_used_at"]),
        ]
        for s in result["sessions"]
    ]
    print_table(["  ID", *(["OWNER"] if owners else []), "NAME", "TURNS", "LAST USED"], rows)


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


@sessions.command("rename")
@click.argument("session_ref", metavar="NAME|ID")
@click.argument("name", required=False)
@json_option
def sessions_rename(session_ref: str, name: str | None) -> None:
    """Rename one of your sessions (no NAME: remove its name)."""
    args = {"session": session_ref, "name": name}
    _show_session(options().client().call("session_rename", args), "renamed")


@sessions.command("prompt")
@click.argument("session_ref", metavar="NAME|ID")
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the session's own system prompt.")
@json_option
def sessions_prompt(session_ref: str, text: str | None, clear: bool) -> None:
    """Set the system prompt of one of your sessions (or --clear it)."""
    if (text is None) != clear:
        fail("give the prompt TEXT or --clear, not both or neither", exits.USAGE)
    args = {"session": session_ref, "system_prompt": text}
    _show_session(options().client().call("session_prompt", args), "system prompt set")


@sessions.command("delete")
@click.argument("session_ref", metavar="NAME|ID")
@json_option
def sessions_delete(session_ref: str) -> None:
    """Delete one of your sessions and its messages (admins: anyone's, by id)."""
    opts = options()
    result = opts.client().call("session_delete", {"session": session_ref})
    if opts.json:
        print_json(result)
    else:
        click.echo(f"deleted {result['deleted']}; current session {result['current']}")


@sessions.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="Delete sessions not used for this long (30d, 12h) or since a timestamp.",
)
@click.option("--all", "everyone", is_flag=True, help="Every user's sessions (admin).")
@click.option("--user", metavar="UID|NAME", help="This user's sessions (admin, unless your own).")
@click.option("--dry-run", is_flag=True, help="Say which sessions would go; delete nothing.")
@json_option
def sessions_prune(older_than: str, everyone: bool, user: str | None, dry_run: bool) -> None:
    """Delete your sessions not used for a while, for good (admins: --all, --user)."""
    now = time.time()
    args: dict[str, Any] = {"older_than_s": max(0.0, now - parse_since(older_than, now))}
    if everyone:
        args["all"] = True
    if user is not None:
        args["user"] = user
    if dry_run:
        args["dry_run"] = True
    opts = options()
    result = opts.client().call("sessions_prune", args)
    if opts.json:
        print_json(result)
        return
    verb = "would delete" if result["dry_run"] else "deleted"
    for s in result["sessions"]:
        name = f" ({visible(s['name'])})" if s.get("name") else ""
        click.echo(f"{verb} {s['id']}{name}, last used {_when(s['last_used_at'])}")
    messages = "" if result["messages"] is None else f", {result['messages']} messages"
    click.echo(f"{verb} {len(result['sessions'])} sessions{messages}")


def _show_session(result: dict[str, Any], label: str) -> None:
    opts = options()
    if opts.json:
        print_json(result)
        return
    s = result["session"]
    click.echo(f"{label}: {s['id']}" + (f" ({visible(s['name'])})" if s.get("name") else ""))


@click.command()
@click.argument("session_ref", metavar="[SESSION]", required=False)
@click.option("-n", "--limit", default=100, show_default=True, help="Most recent messages to show.")
@json_option
def history(session_ref: str | None, limit: int) -> None:
    """Show a session's messages (your current session by default)."""
    opts = options()
    args: dict[str, Any] = {"limit": limit, "stream": True}
    if session_ref:
        args["session"] = session_ref
    with opts.client() as client:
        session, messages, summary = read_history(client, args)
    if opts.json:
        print_json({"session": session, "messages": messages, "summary": summary})
        return
    click.echo(
        style(
            f"session {session['id']}"
            + (f" ({visible(session['name'])})" if session.get("name") else "")
            + f", {session['turns']} turns",
            bold=True,
        )
    )
    upto = summary["upto_message_id"] if summary else None
    if upto is not None and (not messages or messages[0]["id"] > upto):
        _summary_line(summary)  # it covers older messages than those shown
    for m in messages:
        status = "" if m["status"] in ("answered", "complete") else f" [{m['status']}]"
        who = "you" if m["role"] == "user" else visible(m.get("model") or "model")
        click.echo(
            style(
                f"\n{who} · {_when(m['created_at'])}{status}",
                fg="cyan" if m["role"] == "user" else "green",
            )
        )
        click.echo(for_terminal(m["content"]))
        if m["id"] == upto:
            _summary_line(summary)


def _summary_line(summary: Any) -> None:
    """The marked line: what is above it reaches the model only as a summary."""
    click.echo(
        style(
            f"\n-- summary: the {summary['turns']} exchanges up to here reach the model "
            f"summarised (by {visible(summary['model'])}) --",
            bold=True,
        )
    )


def read_history(
    client: Client, args: dict[str, Any]
) -> tuple[dict[str, Any], list[Any], dict[str, Any] | None]:
    """Every message of a streamed `history`, a long one joined from its pieces."""
    messages: list[dict[str, Any]] = []
    pieces: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") != "message":
            return
        piece = event["message"]
        pieces.append(piece["content"])
        if not piece.get("more"):
            messages.append({**piece, "content": "".join(pieces)})
            messages[-1].pop("more", None)
            pieces.clear()

    result = client.call("history", args, on_event=on_event)
    return result["session"], messages, result.get("summary")


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
