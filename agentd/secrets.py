"""The two secrets: the database key and the Gemini API key.

Sources, first found wins:

    DB key      credential `db-key` > secrets.db_key_file / AGENTD_DB_KEY_FILE >
                <state_dir>/db.key > generated into <state_dir>/db.key (development only)
    Gemini key  credential `gemini-api-key` > secrets.gemini_api_key_file >
                GEMINI_API_KEY > GOOGLE_API_KEY > none (degraded mode)

A `Secret` never shows its value in repr/str, so a stray log line or
traceback cannot leak it. Key files are checked before they are read (trust.py):
owned by the daemon's uid or root, not writable by others, never a symlink, and
not readable by others outside development. A key that cannot be read is a
ConfigError (exit 78, one line), never a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple

from agentd.config import Config
from agentd.errors import ConfigError
from agentd.paths import Paths, ensure_private_dir
from agentd.trust import check_key_file

_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}\n?")


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class DbKey(NamedTuple):
    secret: Secret
    source: str  # where it came from, safe to show


def load_db_key(config: Config, paths: Paths, environ: Mapping[str, str]) -> DbKey:
    for source, path in _db_key_candidates(config, paths):
        if _present(path, "DB key file"):
            _check(path, config, paths)
            return DbKey(Secret(_read_hex_key(path)), source)
    if config.secrets.db_key_file:
        raise ConfigError(f"DB key file {config.secrets.db_key_file} does not exist")
    if not config.is_development:
        raise ConfigError(
            f"no database key: in the {config.profile} profile provide the credential 'db-key' "
            "or AGENTD_DB_KEY_FILE (64 hex characters); only development generates one"
        )
    return DbKey(Secret(_generate_key(paths.generated_key)), f"generated {paths.generated_key}")


def read_key_file(path: Path, config: Config, paths: Paths) -> Secret:
    """A DB key from a file named on the command line (restore, rekey), checked like the
    daemon's own: 64 hex characters, owned by us or root, not writable by others."""
    if not _present(path, "DB key file"):
        raise ConfigError(f"DB key file {path} does not exist")
    _check(path, config, paths)
    return Secret(_read_hex_key(path))


def _db_key_candidates(config: Config, paths: Paths) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if paths.credentials_dir:
        out.append(("credential db-key", paths.credentials_dir / "db-key"))
    if config.secrets.db_key_file:
        out.append((f"key file {config.secrets.db_key_file}", Path(config.secrets.db_key_file)))
        return out  # an explicit key file is never silently replaced by another key
    out.append((f"key file {paths.generated_key}", paths.generated_key))
    return out


def _present(path: Path, what: str) -> bool:
    """Whether something is at path (a symlink counts: the check then refuses it)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:  # EACCES on the directory, as on an unreadable credentials dir
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    return True


def _check(path: Path, config: Config, paths: Paths) -> None:
    credential = paths.credentials_dir is not None and path.parent == paths.credentials_dir
    check_key_file(path, credential=credential, strict=not config.is_development)


def _read_hex_key(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot read DB key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"DB key file {path} must hold 64 hex characters (256 bits)") from None
    if not _HEX_KEY.fullmatch(text):
        raise ConfigError(f"DB key file {path} must hold 64 hex characters (256 bits)")
    return text.strip().lower()


def _generate_key(path: Path) -> str:
    # Imported here: `secrets` pulls in hmac, and only a first start needs it.
    import secrets as stdlib_secrets

    ensure_private_dir(path.parent)
    key = stdlib_secrets.token_hex(32)
    # O_EXCL: never overwrite a key (or follow a link) that appeared meanwhile; 0600 from
    # creation, and exactly 0600 whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_gemini_key(config: Config, paths: Paths, environ: Mapping[str, str]) -> Secret | None:
    credential = paths.credentials_dir / "gemini-api-key" if paths.credentials_dir else None
    if credential is not None and _present(credential, "secret file"):
        _check(credential, config, paths)
        return _read_text_secret(credential)
    if config.secrets.gemini_api_key_file:
        path = Path(config.secrets.gemini_api_key_file)
        if _present(path, "secret file"):
            _check(path, config, paths)
        return _read_text_secret(path)
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        if environ.get(name, "").strip():
            return Secret(environ[name].strip())
    return None


def _read_text_secret(path: Path) -> Secret | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path} is not UTF-8 text") from None
    return Secret(value) if value else None
