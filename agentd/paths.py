"""Where agentd keeps its files: systemd's directories when set, XDG otherwise."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from agentd.config import Config
from agentd.errors import ConfigError
from agentd.protocol import default_socket_path


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class Paths(NamedTuple):
    state_dir: Path
    socket: Path
    credentials_dir: Path | None

    @property
    def database(self) -> Path:
        return self.state_dir / "agentd.db"

    @property
    def generated_key(self) -> Path:
        return self.state_dir / "db.key"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "agentd.log"


def resolve_paths(config: Config, environ: Mapping[str, str]) -> Paths:
    # Absolute: a detached daemon leaves its caller's directory once READY (cli.py).
    return Paths(
        state_dir=Path(config.daemon.state_dir or _default_state_dir(environ)).absolute(),
        socket=Path(config.daemon.socket_path or default_socket_path(environ)).absolute(),
        credentials_dir=_first(environ.get("CREDENTIALS_DIRECTORY")),
    )


def _default_state_dir(environ: Mapping[str, str]) -> Path:
    systemd_dir = _first(environ.get("STATE_DIRECTORY"))
    if systemd_dir:
        return systemd_dir
    xdg = environ.get("XDG_STATE_HOME") or os.path.join(environ.get("HOME", "/"), ".local", "state")
    return Path(xdg) / "agentd"


def _first(value: str | None) -> Path | None:
    """systemd passes several directories colon-separated; ours is the first."""
    if not value:
        return None
    return Path(value.split(":", 1)[0])


def ensure_private_dir(path: Path) -> bool:
    """Create a directory only its owner can enter, 0700 whatever the umask; True if created.

    An existing one is left as it is: callers check whether it can be trusted.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    os.chmod(path, 0o700)  # mkdir's mode passed through the umask
    return True
