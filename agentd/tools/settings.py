"""The [tools] section and its [[tools.servers]] tables.

Stdlib only: the config loader imports it on every start, tools or not.
A server table is parsed here into a `ServerSpec`; what is wrong with one
raises ToolConfigProblem, which the loader turns into a ConfigError naming
the key and the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from agentd.constraints import bounded

POLICIES: Final = ("allow", "ask", "deny")
TRANSPORTS: Final = ("stdio", "http")
ROLES: Final = ("admin", "chat")
# Gemini's rule for a function name, and so for a server's prefix: letters,
# digits, underscores, dots, dashes; at most 64 characters in all.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")


class ToolConfigProblem(ValueError):
    """What is wrong with one [[tools.servers]] table."""


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server: how to reach it and what its tools may do."""

    name: str
    transport: str = "stdio"
    command: str = ""  # stdio: the program (a path, or a name on PATH)
    args: tuple[str, ...] = ()
    # stdio: added to a minimal environment; may hold a token: never in repr (--check-config)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    cwd: str | None = None
    url: str = ""  # http: the streamable HTTP endpoint
    token_file: str | None = None  # http: a bearer token, read when connecting
    enabled: bool = True
    default_policy: str = "ask"
    policies: tuple[tuple[str, str], ...] = ()  # tool name -> allow / ask / deny
    roles: tuple[str, ...] = ROLES  # roles whose chats may use its tools

    def policy(self, tool: str) -> str:
        return dict(self.policies).get(tool, self.default_policy)


@dataclass(frozen=True)
class ToolSettings:
    max_steps: int = bounded(8, gt=0)  # model turns that may call tools, per chat
    call_timeout_s: float = bounded(30.0, gt=0)  # one tool call, start to result
    max_result_bytes: int = bounded(64 * 1024, gt=0)  # a result past it is cut, with a note
    deadline_s: float = bounded(300.0, gt=0)  # the whole loop; then the model must answer
    approval_timeout_s: float = bounded(60.0, gt=0)  # no answer to an `ask` in time: denied
    restart_backoff_s: float = bounded(1.0, gt=0)  # a crashed server's first restart delay
    restart_backoff_max_s: float = bounded(60.0, gt=0)
    start_timeout_s: float = bounded(20.0, gt=0)  # spawn, initialize and list tools
    servers: tuple[ServerSpec, ...] = ()  # [[tools.servers]] tables


_KEYS: Final = frozenset(
    {
        "name",
        "transport",
        "command",
        "args",
        "env",
        "cwd",
        "url",
        "token_file",
        "enabled",
        "policy",
        "tools",
        "roles",
    }
)


def parse_servers(raw: Any) -> tuple[ServerSpec, ...]:
    """[[tools.servers]] tables as ServerSpecs; raises ToolConfigProblem."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ToolConfigProblem("must be an array of tables, [[tools.servers]]")
    specs = tuple(_parse_server(table) for table in raw)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ToolConfigProblem("two servers have the same name")
    return specs


def _parse_server(table: dict[str, Any]) -> ServerSpec:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ToolConfigProblem(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    name = _text(table, "name", "")
    if not _NAME.match(name):
        raise ToolConfigProblem(
            f"name {name!r}: 1 to 32 letters, digits, '_', '.', '-', starting with a letter"
        )
    transport = _choice(table, "transport", "stdio", TRANSPORTS)
    spec = ServerSpec(
        name=name,
        transport=transport,
        command=_text(table, "command", ""),
        args=_texts(table, "args"),
        env=tuple(sorted(_table(table, "env").items())),
        cwd=table.get("cwd"),
        url=_text(table, "url", ""),
        token_file=table.get("token_file"),
        enabled=bool(table.get("enabled", True)),
        default_policy=_choice(table, "policy", "ask", POLICIES),
        policies=tuple(sorted(_policies(_table(table, "tools")).items())),
        roles=tuple(_texts(table, "roles") or ROLES),
    )
    if transport == "stdio" and not spec.command:
        raise ToolConfigProblem(f"server {name!r}: a stdio server needs `command`")
    if transport == "http" and not spec.url.startswith(("http://", "https://")):
        raise ToolConfigProblem(f"server {name!r}: an http server needs an http(s) `url`")
    if bad := [r for r in spec.roles if r not in ROLES]:
        raise ToolConfigProblem(f"server {name!r}: role {bad[0]!r} is not one of {ROLES}")
    return spec


def _text(table: dict[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ToolConfigProblem(f"{key!r} must be a string")
    return value


def _texts(table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ToolConfigProblem(f"{key!r} must be an array of strings")
    return tuple(value)


def _table(table: dict[str, Any], key: str) -> dict[str, str]:
    value = table.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ToolConfigProblem(f"{key!r} must be a table of strings")
    return value


def _choice(table: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(table, key, default)
    if value not in choices:
        raise ToolConfigProblem(f"{key!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _policies(tools: dict[str, str]) -> dict[str, str]:
    if bad := [p for p in tools.values() if p not in POLICIES]:
        raise ToolConfigProblem(
            f"a tool policy must be one of {', '.join(POLICIES)}, got {bad[0]!r}"
        )
    return tools
