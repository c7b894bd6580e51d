"""backup: an online, encrypted, checked copy of the store (admin only).

Arguments: `path` (absolute; default <state dir>/backups/agentd-<UTC time>.db),
`key` (64 hex characters: encrypt with this key instead of the database's),
`force` (replace an existing file), `keep` (then keep only the newest N
backups of that directory). The work is agentd/maintenance/backup.py's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from agentd.access import Role
from agentd.commands import Call, CommandSet
from agentd.commands.args import optional, optional_or_none
from agentd.errors import BadRequest, MaintenanceError
from agentd.maintenance.backup import BackupRequest, run_backup
from agentd.runtime import Runtime
from agentd.secrets import Secret

SPECS = CommandSet()
command = SPECS.command

_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}\Z")
MAX_KEEP: Final = 10_000


@command("backup", role=Role.ADMIN, args=("path", "key", "force", "keep"))
async def backup(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Write a backup while chats go on; reply with its path, size, rows and audit head."""
    request = backup_request(call.args)
    try:
        report = await run_backup(runtime.db.path, runtime.db.key, runtime.paths.state_dir, request)
    except MaintenanceError as exc:
        raise BadRequest(str(exc)) from None
    return report.as_dict()


def backup_request(args: dict[str, Any]) -> BackupRequest:
    path = optional_or_none(args, "path", str)
    if path is not None and not path.startswith("/"):
        raise BadRequest("argument 'path' must be an absolute path")
    key = optional_or_none(args, "key", str)
    if key is not None and not _HEX_KEY.match(key):
        raise BadRequest("argument 'key' must be 64 hex characters (256 bits)")  # never echoed
    keep = optional_or_none(args, "keep", int)
    if keep is not None and not 1 <= keep <= MAX_KEEP:
        raise BadRequest(f"argument 'keep' must be between 1 and {MAX_KEEP}")
    return BackupRequest(
        target=Path(path) if path is not None else None,
        key=Secret(key.lower()) if key is not None else None,
        force=optional(args, "force", bool, False),
        keep=keep,
    )
