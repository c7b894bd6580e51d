"""Backups, restores and key rotation of the encrypted store.

    backup.py    online: a snapshot copied off the store thread while chats go on
                 (`agentctl backup`, the `backup` socket command)
    restore.py   offline: a checked backup put in place of the database (`agentd restore`)
    rekey.py     offline: the database re-encrypted under a new key (`agentd rekey`)
    sqlcipher.py keyed connections to files other than the daemon's store, and copies
    checks.py    what a copy holds, after SQLCipher's page checks and the audit chain
    files.py     temporary files, fsync, publishing by rename, pruning old backups
    offline.py   the state-directory lock held while restore or rekey works

Every step writes to a temporary file beside its target and renames it into
place only once it is checked: a failure at any point removes the temporary
file and leaves the database and the older backups as they were.
"""
