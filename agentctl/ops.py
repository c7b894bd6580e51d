"""agentctl metrics, health, logs, audit: what operators and monitors run.

    metrics [--json | --prometheus]    a readable table, the JSON snapshot, or the
                                       Prometheus text exposition (0.0.4)
    health                             exit 0 when healthy, 1 otherwise
    logs [-n N] [-f] [--level L] [--since 10m|TIMESTAMP] [--request ID] [--json]
    audit [filters]                    recent audit rows (admin)
    audit verify [--full]              exit 0 when the hash chain is intact, 1 naming
                                       the first broken row; rows after the last verify
                                       only, unless --full

Imports click, msgpack (through the client) and agentd.protocol only.
Found by agentctl.cli (LAZY_COMMANDS) when named.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Final

import click

from agentctl import exits
from agentctl.client import ConnectionLost
from agentctl.context import Options, json_option, options, show
from agentctl.output import (
    human_bytes,
    human_duration,
    print_components,
    print_json,
    print_pairs,
    print_table,
    state_colour,
    style,
    visible,
)
from agentctl.since import parse_since

_LEVEL_COLOURS: Final = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}


# -- metrics -----------------------------------------------------------------------------


@click.command()
@click.option("--prometheus", is_flag=True, help="Print the Prometheus text exposition format.")
@json_option
def metrics(prometheus: bool) -> None:
    """Show what the agent has done: requests, latency, tokens, cost, resources."""
    opts = options()
    if prometheus:
        result = opts.client().call("metrics", {"format": "prometheus"})
        click.echo(result["text"], nl=False)
        return
    show("metrics", lambda result: _print_summary(result["summary"]), {"format": "json"})


def _print_summary(s: dict[str, Any]) -> None:
    requests, tokens, provider = s["requests"], s["tokens"], s["provider"]
    print_pairs(
        [
            ("uptime", human_duration(s["uptime_s"])),
            ("state", state_colour(str(s["lifecycle"]["state"]))),
            (
                "requests",
                f"{requests['total']} total, {requests['per_minute']:.0f}/min in the last 60s",
            ),
            (
                "error rate",
                f"{requests['error_ratio']:.1%} ({requests['errors_in_window']} of "
                f"{requests['requests_in_window']} in {requests['window_s']}s)",
            ),
            ("chat latency", _latency(s["chat_latency_s"])),
            ("provider latency", _latency(s["provider_latency_s"])),
            (
                "tokens",
                f"{tokens['in']} in, {tokens['out']} out, "
                f"~${tokens['estimated_cost_usd']:.4f} estimated",
            ),
            (
                "provider",
                f"{provider['retries']} retries, {provider['fallbacks']} fallbacks, "
                f"{provider['degraded']} degraded",
            ),
            ("breaker", f"{provider['breaker_state'] or 'n/a'}, {provider['breaker_trips']} trips"),
            (
                "rejected",
                f"{s['rejections']['rate_limited']} rate limited, {s['rejections']['busy']} busy",
            ),
            (
                "chat queue",
                f"{s['chat_queue']['waiting']} waiting, {s['chat_queue']['in_flight']} in flight",
            ),
            ("store", human_bytes(s["store_size_bytes"])),
            ("memory (RSS)", human_bytes(s["rss_bytes"])),
            ("event-loop lag", f"{s['event_loop_lag_s']['max_recent'] * 1000:.1f} ms"),
            ("audit", f"{s['audit']['rows']} rows, {s['audit']['dropped']} dropped"),
        ],
        indent=0,
    )
    by_command = requests["by_command"]
    if by_command:
        click.echo("")
        outcomes = sorted({o for counts in by_command.values() for o in counts})
        rows = [
            [cmd, *(str(counts.get(o, 0)) for o in outcomes)] for cmd, counts in by_command.items()
        ]
        print_table(["command", *outcomes], rows)


def _latency(summary: dict[str, Any]) -> str:
    if not summary["count"]:
        return "no data"
    ms = {k: summary[k] * 1000 for k in ("avg", "p50", "p95", "p99")}
    return (
        f"avg {ms['avg']:.0f} ms, p50 {ms['p50']:.0f}, p95 {ms['p95']:.0f}, "
        f"p99 {ms['p99']:.0f} ({summary['count']} calls)"
    )


# -- health ------------------------------------------------------------------------------


@click.command()
@json_option
def health() -> None:
    """Check every component; exit 0 when healthy, 1 otherwise (for scripts and monitors)."""
    result = show("health", _print_health)
    sys.exit(exits.OK if result.get("healthy") else exits.FAILED)


def _print_health(h: dict[str, Any]) -> None:
    verdict = "healthy" if h["healthy"] else "unhealthy"
    click.echo(f"{verdict}: {state_colour(h['state'])} - {h.get('state_reason', '')}")
    print_components(h.get("components", {}))
    for alert in h.get("alerts", []):
        click.echo(style(f"  ALERT {alert['name']}: {alert['detail']}", fg="red", bold=True))


# -- logs -----------------------------------------------------------------------------------


@click.command()
@click.option("-n", "--lines", default=100, show_default=True, help="How many recent records.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new records until Ctrl-C.")
@click.option(
    "--level", metavar="LEVEL", help="Only records at this level or above (INFO, WARNING...)."
)
@click.option(
    "--since", metavar="WHEN", help="Only records since 10m, 2h, 1d ago or an ISO timestamp."
)
@click.option("--request", "request_id", metavar="ID", help="Only records of this request id.")
@json_option
def logs(
    lines: int, follow: bool, level: str | None, since: str | None, request_id: str | None
) -> None:
    """Show the daemon's recent log records (no prompt or answer text, no secrets)."""
    opts = options()
    args: dict[str, Any] = {"lines": lines, "follow": follow}
    if level:
        args["level"] = level
    if since:
        args["since"] = parse_since(since, time.time())
    if request_id:
        args["request_id"] = request_id
    if follow:
        _follow(opts, args)
        return
    for record in opts.client().call("logs", args)["records"]:
        _print_record(record, opts.json)


def _follow(opts: Options, args: dict[str, Any]) -> None:
    def on_event(message: dict[str, Any]) -> None:
        if message.get("event") == "log":
            _print_record(message["record"], opts.json)

    try:
        with opts.client(timeout=None) as client:
            client.call("logs", args, on_event=on_event)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    except ConnectionLost:
        click.echo("agentctl: agentd closed the connection", err=True)


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record, sort_keys=True))
        return
    # Records quote what peers sent (command names, paths): escaped, one line each.
    level = visible(str(record.get("level", "")))
    colour = _LEVEL_COLOURS.get(level)
    parts = [
        visible(str(record.get("time", ""))),
        style(level.ljust(8), fg=colour) if colour else level.ljust(8),
        visible(f"{record.get('logger', '')}: {record.get('message', '')}"),
    ]
    if record.get("request_id"):
        parts.append(f"[{visible(str(record['request_id']))}]")
    click.echo(" ".join(parts))


# -- audit ------------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.option("-n", "--limit", default=50, show_default=True, help="How many rows, newest first.")
@click.option("--command", "command_name", metavar="NAME", help="Only this command.")
@click.option("--outcome", type=click.Choice(["ok", "error"]), help="Only this outcome.")
@click.option("--session", metavar="ID|NAME", help="Only this session.")
@click.option("--request", "request_id", metavar="ID", help="Only this request id.")
@click.option(
    "--since", metavar="WHEN", help="Only rows since 10m, 2h, 1d ago or an ISO timestamp."
)
@json_option
@click.pass_context
def audit(
    ctx: click.Context,
    limit: int,
    command_name: str | None,
    outcome: str | None,
    session: str | None,
    request_id: str | None,
    since: str | None,
) -> None:
    """List recent audit rows (one per request, hash-chained); admin only."""
    if ctx.invoked_subcommand is not None:
        return
    opts = options()
    args: dict[str, Any] = {"limit": limit}
    filters = {
        "command": command_name,
        "outcome": outcome,
        "session": session,
        "request_id": request_id,
    }
    args.update({key: value for key, value in filters.items() if value is not None})
    if since:
        args["since"] = parse_since(since, time.time())
    rows = opts.client().call("audit", args)["rows"]
    if opts.json:
        print_json(rows)
        return
    print_table(
        [
            "seq",
            "time",
            "uid",
            "pid",
            "command",
            "outcome",
            "answer",
            "latency",
            "session",
            "owner",
            "model",
            "tokens",
            "request",
        ],
        [_audit_row(r) for r in rows],
    )


def _audit_row(r: dict[str, Any]) -> list[str]:
    outcome = r["outcome"] if r["error_code"] is None else f"{r['outcome']} {r['error_code']}"
    tokens = f"{r['tokens_in']}/{r['tokens_out']}" if r["model"] else ""
    return [
        str(r["seq"]),
        r["ts"],
        str(r["peer_uid"]),
        str(r["peer_pid"]),
        r["command"],
        outcome,
        r.get("answer") or "",
        f"{r['latency_ms']} ms",
        r["session_id"] or "",
        _owner(r.get("owner_uid")),
        r["model"] or "",
        tokens,
        r["request_id"],
    ]


def _owner(owner_uid: int | None) -> str:
    """Whose data an admin's request touched (blank: the peer's own)."""
    if owner_uid is None:
        return ""
    return "all" if owner_uid == -1 else str(owner_uid)


@audit.command()
@click.option(
    "--full", is_flag=True, help="Re-check every row, not only those since the last verify."
)
@json_option
def verify(full: bool) -> None:
    """Check the hash chain since the last verify (--full: all of it); exit 0 when
    intact, 1 naming the first broken row."""
    args = {"full": True} if full else {}
    result = show("audit_verify", _print_verdict, args, timeout=None)
    sys.exit(exits.OK if result["ok"] else exits.FAILED)


def _print_verdict(result: dict[str, Any]) -> None:
    if result["ok"]:
        head, start = result["head"], result.get("start") or {"seq": 0}
        since = "" if start["seq"] == 0 else f" after seq {start['seq']}"
        click.echo(
            f"audit trail intact: {result['rows_checked']} rows checked{since}, head seq "
            f"{head['seq']} hash {head['hash']}"
        )
    else:
        where = f"seq {result['first_broken_seq']}" if result["first_broken_seq"] else "the store"
        click.echo(
            f"audit trail BROKEN at {where}: {result['reason']} ({result['detail']}); "
            f"{result['rows_checked']} rows intact before it"
        )
