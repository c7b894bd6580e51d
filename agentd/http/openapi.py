"""The OpenAPI 3.1 document of the HTTP API, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from agentd.protocol import ErrorCode

_ERROR: Final = {"$ref": "#/components/responses/Error"}
_ERRORS: Final = {str(s): _ERROR for s in (400, 401, 403, 404, 413, 429, 503)}


def _get(summary: str, command: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": f"The `{command}` command's result (docs/protocol.md), as JSON.",
            "parameters": params or [],
            "responses": {"200": {"description": "the command's result"}, **_ERRORS},
        }
    }


def _query(name: str, kind: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": kind},
    }


_SESSION: Final = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}

DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "agentd HTTP API",
        "version": "1",
        "description": (
            "The agentd command layer over HTTP; roles come from SO_PEERCRED on the Unix"
            " socket, from the bearer token on loopback TCP (docs/http.md)."
        ),
    },
    "paths": {
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 while READY or PROCESSING, else 503",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition (agentctl metrics --prometheus)",
                "responses": {"200": {"description": "text/plain; version=0.0.4"}, **_ERRORS},
            }
        },
        "/api/v1/status": _get("Daemon status", "status"),
        "/api/v1/health": _get("Health of every component", "health"),
        "/api/v1/sessions": _get(
            "The caller's sessions (admins: everyone's with all=true)",
            "sessions",
            [
                _query("limit", "integer", "at most this many"),
                _query("all", "boolean", "every user's (admin)"),
                _query("user", "string", "one user's (admin)"),
            ],
        ),
        "/api/v1/sessions/{session}/history": _get(
            "A session's latest messages, oldest first",
            "history",
            [_SESSION, _query("limit", "integer", "at most this many messages")],
        ),
        "/api/v1/search": _get(
            "Full-text search over the caller's conversations",
            "search",
            [
                _query("q", "string", "the query", required=True),
                _query("session", "string", "only this session"),
                _query("limit", "integer", "at most this many hits"),
                _query("all", "boolean", "every user's (admin)"),
            ],
        ),
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completion (stream: true for server-sent events)",
                "requestBody": {"required": True, "content": {"application/json": {}}},
                "responses": {
                    "200": {"description": "chat.completion or an SSE stream"},
                    **_ERRORS,
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Models offered (OpenAI list)",
                "responses": {"200": {"description": "list"}},
            }
        },
    },
    "components": {
        "responses": {
            "Error": {
                "description": "The socket protocol's error object; Retry-After with 429",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {
                                "type": "string",
                                "enum": sorted(
                                    v for k, v in vars(ErrorCode).items() if not k.startswith("_")
                                ),
                            },
                            "message": {"type": "string"},
                            "retry_after": {"type": "number"},
                            "request_id": {"type": "string"},
                        },
                    }
                },
            }
        },
    },
}


async def document(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
