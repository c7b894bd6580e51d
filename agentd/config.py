"""Configuration: one frozen, typed object built once at the edge.

Precedence, lowest first (each layer records where its values came from)::

    built-in defaults < profile (AGENTD_ENV) < TOML file < AGENTD_* environment < flags

Unknown sections or keys are errors that name the key and the file. Secrets are
never part of the config: only the *paths* of key files are (see secrets.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agentd.audit.settings import AuditSettings
from agentd.constraints import bounded, problems
from agentd.errors import ConfigError
from agentd.governance.settings import BudgetSettings, ModelPolicySettings, ScanSettings
from agentd.http.settings import HttpSettings
from agentd.providers.settings import ProviderSettings
from agentd.ratelimit import LimitSettings
from agentd.telemetry.settings import HealthSettings, PricingSettings
from agentd.tools.settings import ServerSpec, ToolConfigProblem, ToolSettings, parse_servers

PROFILES: Final = ("development", "staging", "production")
SOCKET_GROUP_ROLES: Final = ("chat", "read", "none")
SYSTEM_CONFIG: Final = Path("/etc/agentd/agentd.toml")


def _level_problem(level: str) -> str | None:
    return None if level.upper() in logging.getLevelNamesMapping() else f"{level!r} is not a level"


@dataclass(frozen=True)
class DaemonSettings:
    """Where the daemon lives and how it treats connections."""

    state_dir: str = ""  # "" = $STATE_DIRECTORY, else ~/.local/state/agentd
    socket_path: str = ""  # "" = $RUNTIME_DIRECTORY/agentd.sock, else $XDG_RUNTIME_DIR/agentd/
    socket_group: str = ""  # group allowed on the socket (mode 0660); "" = owner only (0600)
    max_frame_bytes: int = bounded(1024 * 1024, gt=0)
    max_connections: int = bounded(1024, gt=0)
    max_connections_per_uid: int = bounded(64, gt=0)  # admins are not held to it
    admin_reserved_connections: int = 8  # the last free slots: admins only (as root's way in)
    idle_timeout_s: float = bounded(
        300.0, gt=0
    )  # a connection silent between requests this long is closed
    frame_timeout_s: float = bounded(
        10.0, gt=0
    )  # a frame started but not finished within this is dropped
    shutdown_grace_s: float = bounded(20.0, ge=0)  # in-flight chats get this long on STOPPING
    health_interval_s: float = bounded(
        5.0, gt=0
    )  # how often components are probed in the background
    recovery_max_backoff_s: float = 30.0


@dataclass(frozen=True)
class StoreSettings:
    busy_timeout_ms: int = 5000


@dataclass(frozen=True)
class SecretsSettings:
    """Paths of key files only; the keys themselves never enter the config."""

    db_key_file: str = ""  # "" = credential db-key, else <state_dir>/db.key
    gemini_api_key_file: str = ""  # "" = credential gemini-api-key, else GEMINI_API_KEY


@dataclass(frozen=True)
class LogSettings:
    level: str = bounded("INFO", check=_level_problem)
    file_max_bytes: int = 10 * 1024 * 1024
    file_backups: int = 3
    ring_size: int = bounded(2000, gt=0)  # records kept in memory for `agentctl logs`


CONTEXT_STRATEGIES: Final = ("summarize", "drop")


@dataclass(frozen=True)
class ChatSettings:
    max_prompt_bytes: int = bounded(
        200_000, gt=0
    )  # UTF-8 bytes of one prompt (stdin and argument together)
    # UTF-8 bytes of one answer's text; past it the answer is cut, stored as
    # truncated, and the rest is not read. Well under daemon.max_frame_bytes.
    max_answer_bytes: int = bounded(256 * 1024, gt=0)
    max_concurrent: int = bounded(8, gt=0)  # chats at the provider at once
    max_queue: int = 64  # chats waiting for a slot; one more is answered BUSY
    history_max_turns: int = bounded(
        50, gt=0
    )  # exchanges read from the store before the token budget applies
    max_system_prompt_bytes: int = bounded(
        16 * 1024, gt=0
    )  # UTF-8 bytes of a session's own system prompt
    # History past gemini.context_token_budget: "summarize" older turns, or "drop" them.
    context_strategy: str = bounded("summarize", one_of=CONTEXT_STRATEGIES)
    summary_model: str = ""  # "" = gemini.fallback_model


@dataclass(frozen=True)
class RetentionSettings:
    """How long sessions are kept (agentd/retention.py); 0 keeps them forever."""

    max_age_days: float = bounded(0.0, ge=0)  # sessions unused for longer are deleted
    max_sessions_per_user: int = bounded(0, ge=0)  # each uid keeps its newest this many
    interval_s: float = bounded(3600.0, gt=0)  # how often the daemon applies the policy


@dataclass(frozen=True)
class AccessSettings:
    """Who may do what over the socket (see access.py); names or numeric ids."""

    admin_users: tuple[str, ...] = ()  # root and the daemon's own user are always admin
    admin_groups: tuple[str, ...] = ()
    chat_groups: tuple[str, ...] = ()
    read_groups: tuple[str, ...] = ()
    # What membership of daemon.socket_group alone grants: chat, read or none (then the
    # socket group only lets peers connect, and the groups above decide their roles).
    socket_group_role: str = bounded("chat", one_of=SOCKET_GROUP_ROLES)


@dataclass(frozen=True)
class Config:
    profile: str = "development"
    profile_source: str = "default"  # or "environment AGENTD_ENV"
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    gemini: ProviderSettings = field(default_factory=ProviderSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    secrets_scan: ScanSettings = field(default_factory=ScanSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    model_policy: ModelPolicySettings = field(default_factory=ModelPolicySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    tools: ToolSettings = field(default_factory=ToolSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    config_file: str | None = None
    # "section.key" -> where the value came from ("default", "profile production", a path...)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_development(self) -> bool:
        return self.profile == "development"



SECTIONS: Final[dict[str, type[Any]]] = {
    "daemon": DaemonSettings,
    "store": StoreSettings,
    "secrets": SecretsSettings,
    "log": LogSettings,
    "access": AccessSettings,
    "chat": ChatSettings,
    "gemini": ProviderSettings,
    "limits": LimitSettings,
    "health": HealthSettings,
    "pricing": PricingSettings,
    "secrets_scan": ScanSettings,
    "budgets": BudgetSettings,
    "model_policy": ModelPolicySettings,
    "audit": AuditSettings,
    "retention": RetentionSettings,
    "tools": ToolSettings,
    "http": HttpSettings,
}

PROFILE_OVERRIDES: Final[dict[str, dict[str, Any]]] = {
    "development": {},
    "staging": {},
    "production": {"daemon.shutdown_grace_s": 20.0},
}

# The documented, stable environment names; any key is also reachable as
# AGENTD_<SECTION>__<KEY> (e.g. AGENTD_GEMINI__ATTEMPT_TIMEOUT_S=10).
ENV_NAMES: Final[dict[str, str]] = {
    "AGENTD_SOCKET": "daemon.socket_path",
    "AGENTD_STATE_DIR": "daemon.state_dir",
    "AGENTD_DB_KEY_FILE": "secrets.db_key_file",
    "AGENTD_LOG_LEVEL": "log.level",
    "AGENTD_GEMINI_BASE_URL": "gemini.base_url",
    "AGENTD_GEMINI_MODEL": "gemini.model",
}


def load_config(
    environ: Mapping[str, str],
    *,
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config from every layer, validating as it goes."""
    profile = environ.get("AGENTD_ENV") or "development"
    if profile not in PROFILES:
        raise ConfigError(f"AGENTD_ENV={profile!r} is not one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in _defaults().items():
        values[key], sources[key] = default, "default"
    _apply(values, sources, PROFILE_OVERRIDES[profile], f"profile {profile}")
    path = _find_config_file(environ, config_path)
    if path is not None:
        _apply(values, sources, _read_file(path), str(path))
    for name, (key, value) in _from_environ(environ).items():
        _apply(values, sources, {key: value}, f"environment {name}")
    _apply(values, sources, {k: v for k, v in (flags or {}).items() if v is not None}, "flag")
    _derive_defaults(values, sources)
    profile_source = "environment AGENTD_ENV" if environ.get("AGENTD_ENV") else "default"
    return _build(profile, values, sources, path, profile_source=profile_source)


def _derive_defaults(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Defaults that follow another setting unless they were set themselves."""
    # An answer travels in one reply frame: by default it fits in half of one.
    key = "chat.max_answer_bytes"
    if sources[key] == "default":
        values[key] = min(values[key], values["daemon.max_frame_bytes"] // 2)
        if values[key] != _defaults()[key]:
            sources[key] = "default (half of daemon.max_frame_bytes)"


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = getattr(defaults, f.name)
    return out


@functools.cache
def _field_types(section: str) -> dict[str, Any]:
    """A section's field name -> type. Per section and on demand: get_type_hints
    evaluates every annotation, and most starts only set keys of one or two sections."""
    cls = SECTIONS.get(section)
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(
    values: dict[str, Any], sources: dict[str, str], layer: Mapping[str, Any], origin: str
) -> None:
    for key, raw in layer.items():
        section, _, name = key.partition(".")
        declared = _field_types(section)
        if name not in declared:
            hint = _nearest(key, (f"{s}.{n}" for s in SECTIONS for n in _field_types(s)))
            raise ConfigError(f"{origin}: unknown key {key!r}{hint}")
        values[key] = _coerce(key, raw, declared[name], origin)
        sources[key] = origin


def _nearest(word: str, known: Iterable[str]) -> str:
    """'; did you mean X?' naming the closest known word, or ''."""
    import difflib  # only on the way to an error

    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _find_config_file(environ: Mapping[str, str], config_path: str | None) -> Path | None:
    explicit = config_path or environ.get("AGENTD_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    home = environ.get("HOME")
    candidates = [SYSTEM_CONFIG]
    if home:
        candidates.append(Path(home) / ".config" / "agentd" / "agentd.toml")
    return next((p for p in candidates if p.is_file()), None)


def _read_file(path: Path) -> dict[str, Any]:
    import tomllib  # ~4 ms: only paid when there is a file to read

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for section, body in document.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]{_nearest(section, SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section!r} must be a table, like [{section}]")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def _from_environ(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Variable name -> (key, value): an error names the variable that was set."""
    out: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        if name in ENV_NAMES:
            out[name] = (ENV_NAMES[name], value)
        elif name.startswith("AGENTD_") and "__" in name:
            section, _, key = name.removeprefix("AGENTD_").lower().partition("__")
            out[name] = (f"{section}.{key}", value)
    return out


def _coerce(key: str, raw: Any, expected: Any, origin: str) -> Any:
    """Check (TOML) or convert (environment strings) one value to its declared type."""
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    if raw is None or (raw == "" and type(None) in allowed):
        if type(None) in allowed:
            return None
        raise ConfigError(f"{origin}: {key} must not be empty")
    if expected == tuple[ServerSpec, ...]:
        try:
            return parse_servers(raw)
        except ToolConfigProblem as exc:
            raise ConfigError(f"{origin}: {key}: {exc}") from None
    for kind in allowed:
        converted = _convert(raw, kind)
        if converted is not _NO:
            return converted
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise ConfigError(f"{origin}: {key} must be {names}, got {raw!r}")


_NO: Final = object()


def _convert(raw: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return raw.lower() in {"1", "true", "yes", "on"}
        return _NO
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                return _NO
        return _NO
    if kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                return _NO
        return _NO
    if kind is str:
        return raw if isinstance(raw, str) else _NO
    if typing.get_origin(kind) is tuple:
        # TOML arrays, or comma-separated strings from the environment.
        items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if isinstance(items, list) and all(isinstance(i, str | int) for i in items):
            return tuple(str(i) for i in items)
        return _NO
    return _NO


def _build(
    profile: str,
    values: dict[str, Any],
    sources: dict[str, str],
    path: Path | None,
    *,
    profile_source: str,
) -> Config:
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        prefix = f"{section}."
        kwargs = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
        sections[section] = cls(**kwargs)
    config = Config(
        profile=profile,
        profile_source=profile_source,
        config_file=str(path) if path else None,
        sources=types.MappingProxyType(dict(sources)),
        **sections,
    )
    _validate(config)
    return config


def _validate(config: Config) -> None:
    """Each section's declared constraints (constraints.py), then the rules across sections."""
    for section in SECTIONS:
        for name, problem in problems(getattr(config, section)):
            key = f"{section}.{name}"
            raise ConfigError(f"{_origin(config, key)}: {key} {problem}")
    _validate_reserve(config)
    if config.chat.max_answer_bytes > config.daemon.max_frame_bytes // 2:
        # The reply carries the answer and its fields in one frame.
        raise ConfigError(
            f"{_origin(config, 'chat.max_answer_bytes')}: chat.max_answer_bytes must be at "
            f"most half of daemon.max_frame_bytes ({config.daemon.max_frame_bytes // 2})"
        )


def _validate_reserve(config: Config) -> None:
    reserved, total = config.daemon.admin_reserved_connections, config.daemon.max_connections
    if not 0 <= reserved < total:
        key = "daemon.admin_reserved_connections"
        raise ConfigError(
            f"{_origin(config, key)}: {key} must be at least 0 and below "
            f"daemon.max_connections ({total}), got {reserved}"
        )


def _origin(config: Config, key: str) -> str:
    return config.sources.get(key, "default")


def effective_items(config: Config) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting, for `agentd --check-config`."""
    rows = []
    for section in SECTIONS:
        obj = getattr(config, section)
        for f in dataclasses.fields(obj):
            key = f"{section}.{f.name}"
            rows.append((key, getattr(obj, f.name), config.sources.get(key, "default")))
    return rows


def current_environ() -> Mapping[str, str]:
    """The process environment; read here, at the edge, and nowhere else."""
    return os.environ
