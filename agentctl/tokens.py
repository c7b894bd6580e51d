"""agentctl tokens create|list|revoke: bearer tokens for agentd's HTTP API over loopback TCP."""

from __future__ import annotations

import datetime
import re
from typing import Any, Final

import click

from agentctl.context import json_option, show
from agentctl.output import print_table

_EXPIRES: Final = re.compile(r"\s*(\d+)\s*([hdw])\s*\Z")
_UNIT_SECONDS: Final = {"h": 3600, "d": 86400, "w": 7 * 86400}


@click.group()
def tokens() -> None:
    """Bearer tokens for the HTTP API on loopback TCP ([http] listen; docs/http.md)."""


@tokens.command()
@click.option("--name", required=True, help="A name for the token (unique).")
@click.option("--role", required=True, type=click.Choice(["read", "chat", "admin"]))
@click.option("--expires", default=None, help="Lifetime: 12h, 30d, 2w (default: none).")
@json_option
def create(name: str, role: str, expires: str | None) -> None:
    """Make a token and print it, once: only its hash is kept."""
    args: dict[str, Any] = {"name": name, "role": role}
    if expires is not None:
        args["expires_s"] = float(_seconds(expires))
    show("tokens_create", _print_created, args)


@tokens.command("list")
@json_option
def list_tokens() -> None:
    """Every token: name, role, expiry, revoked or not (never the token itself)."""
    show("tokens_list", _print_list)


@tokens.command()
@click.argument("token")
@json_option
def revoke(token: str) -> None:
    """Revoke a token by name or id; requests with it are answered 401 from now on."""
    show(
        "tokens_revoke",
        lambda r: click.echo(f"revoked token {r['token']['name']}"),
        {"token": token},
    )


def _seconds(text: str) -> int:
    match = _EXPIRES.match(text)
    if match is None or int(match[1]) == 0:
        raise click.BadParameter(
            f"{text!r} is not a lifetime like 12h, 30d or 2w", param_hint="--expires"
        )
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def _print_created(result: dict[str, Any]) -> None:
    token = result["token"]
    click.echo(result["secret"])
    click.echo(
        f"token {token['name']} (id {token['id']}, role {token['role']}, "
        f"expires {_when(token['expires_at'])}): shown only now; keep it secret",
        err=True,
    )


def _print_list(result: dict[str, Any]) -> None:
    rows = [
        [
            str(t["id"]),
            t["name"],
            t["role"],
            _when(t["created_at"]),
            _when(t["expires_at"]),
            "revoked" if t["revoked_at"] else ("ok" if t["usable"] else "expired"),
        ]
        for t in result["tokens"]
    ]
    print_table(["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"], rows)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
