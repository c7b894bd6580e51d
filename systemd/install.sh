#!/bin/bash
# install.sh - install agentd as a systemd service (see docs/systemd.md).
#
# Usage:
#   systemd/install.sh                  install or update agentd on this machine (as root)
#   systemd/install.sh instance NAME    add the agentd@NAME instance: /etc/agentd/NAME.toml
#                                       and /etc/agentd/NAME/db-key (kept if present)
#
# What it does (idempotent; it never overwrites a config file or a key):
#   1. the virtualenv $AGENTD_VENV: created with $PYTHON and this checkout pip-installed
#      into it; a venv that has pip is upgraded, one without pip but with bin/agentd is
#      used as it is; bin/agentd and bin/agentctl are linked into $PREFIX/bin
#   2. units into $UNITDIR, sysusers.d and tmpfiles.d entries, docs
#   3. user and group agentd (systemd-sysusers), /etc/agentd (0750 root:agentd),
#      /etc/agentd/agentd.toml from etc/agentd.toml, /etc/agentd/db-key (64 hex
#      characters, 0600 root), then systemctl daemon-reload
#
# Environment:
#   DESTDIR      staging root for packages (default: none, i.e. this machine). With
#                DESTDIR, files are only copied: no venv is built (the package provides
#                $AGENTD_VENV), no key is generated, no account is created, nothing is
#                reloaded; tmpfiles.d fixes owners and modes at boot.
#   PREFIX       /usr/local. Only /usr/local and /usr are on systemd's search paths:
#                for another prefix set UNITDIR, SYSUSERSDIR and TMPFILESDIR under /etc.
#   UNITDIR      $PREFIX/lib/systemd/system
#   SYSUSERSDIR  $PREFIX/lib/sysusers.d
#   TMPFILESDIR  $PREFIX/lib/tmpfiles.d
#   AGENTD_VENV  /opt/agentd/venv
#   PYTHON       python3 (3.11 or newer), used to create the venv
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$PREFIX/lib/tmpfiles.d}
DOCDIR=$PREFIX/share/doc/agentd
AGENTD_VENV=${AGENTD_VENV:-/opt/agentd/venv}
PYTHON=${PYTHON:-python3}
CONFDIR=/etc/agentd
UNITS=(agentd.service agentd.socket agentd@.service agentd@.socket agentd-backup.service agentd-backup.timer)

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or set DESTDIR to stage files for a package)"
}

# 64 hex characters (256 bits) from the kernel's CSPRNG, written 0600 without a window
# in which another user could read it; never replaces an existing key.
generate_key() {
  local path=$1 tmp
  [ -e "$path" ] && { say "kept $path"; return; }
  tmp=$(mktemp "$path.XXXXXX")   # mktemp creates the file 0600
  od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' > "$tmp"
  echo >> "$tmp"
  [ "$(tr -d '\n' < "$tmp" | wc -c)" = 64 ] || { rm -f "$tmp"; die "could not generate $path"; }
  mv -n "$tmp" "$path"; rm -f "$tmp"
  say "generated $path (back it up: without it the database cannot be read)"
}

# install_config SRC DEST: copy a config file unless DEST exists (an admin's edits win).
install_config() {
  local from=$1 to=$2
  if [ -e "$to" ]; then say "kept $to"; return; fi
  if [ -f "$from" ]; then
    install -m 0640 "$from" "$to"
  else
    printf '# agentd configuration (TOML); every key is documented in %s\n' \
      "$DOCDIR/agentd.toml.example" > "$to"
    chmod 0640 "$to"
  fi
  [ -n "$DESTDIR" ] || chgrp agentd "$to"
  say "created $to"
}

install_venv() {
  local venv=$DESTDIR$AGENTD_VENV
  if [ -n "$DESTDIR" ]; then
    say "DESTDIR set: not building $AGENTD_VENV (the package must provide it)"
  elif [ -x "$venv/bin/pip" ]; then
    say "updating agentd in $AGENTD_VENV"
    "$venv/bin/pip" install --quiet --upgrade "$SRC"
  elif [ -x "$venv/bin/agentd" ]; then
    say "using agentd in $AGENTD_VENV as it is (no pip there)"
  else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "$PYTHON is older than 3.11 (set PYTHON=/path/to/python3.11)"
    say "creating $AGENTD_VENV"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet "$SRC"
  fi
  install -d "$DESTDIR$PREFIX/bin"
  ln -sfn "$AGENTD_VENV/bin/agentd" "$DESTDIR$PREFIX/bin/agentd"
  ln -sfn "$AGENTD_VENV/bin/agentctl" "$DESTDIR$PREFIX/bin/agentctl"
}

# The units name /usr/local/...; another PREFIX is substituted as they are copied.
install_units() {
  local unit
  install -d "$DESTDIR$UNITDIR"
  for unit in "${UNITS[@]}"; do
    sed "s|/usr/local/|$PREFIX/|g" "$SRC/systemd/$unit" > "$DESTDIR$UNITDIR/$unit"
    chmod 0644 "$DESTDIR$UNITDIR/$unit"
  done
  install -D -m 0644 "$SRC/systemd/agentd.sysusers" "$DESTDIR$SYSUSERSDIR/agentd.conf"
  install -D -m 0644 "$SRC/systemd/agentd.tmpfiles" "$DESTDIR$TMPFILESDIR/agentd.conf"
  install -d "$DESTDIR$DOCDIR"
  install -m 0644 "$SRC/docs/systemd.md" "$DESTDIR$DOCDIR/systemd.md"
  install -m 0644 "$SRC/docs/backup.md" "$DESTDIR$DOCDIR/backup.md"
  [ ! -f "$SRC/etc/agentd.toml" ] || install -m 0644 "$SRC/etc/agentd.toml" "$DESTDIR$DOCDIR/agentd.toml.example"
}

install_config_dir() {
  if [ -n "$DESTDIR" ]; then
    install -d -m 0750 "$DESTDIR$CONFDIR"
    install_config "$SRC/etc/agentd.toml" "$DESTDIR$CONFDIR/agentd.toml"
    say "DESTDIR set: no $CONFDIR/db-key generated (create it on the target, see docs/systemd.md)"
    return
  fi
  systemd-sysusers "$SYSUSERSDIR/agentd.conf"
  install -d -m 0750 -o root -g agentd "$CONFDIR"
  install_config "$SRC/etc/agentd.toml" "$CONFDIR/agentd.toml"
  generate_key "$CONFDIR/db-key"
  systemd-tmpfiles --create "$TMPFILESDIR/agentd.conf"
}

reload_systemd() {
  if [ -n "$DESTDIR" ] || [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: run 'systemctl daemon-reload' on the target"
    return
  fi
  systemctl daemon-reload
  if systemctl -q is-active agentd.service; then
    say "agentd.service is running the old version: systemctl restart agentd"
  fi
}

install_all() {
  require_root
  install_venv
  install_units
  install_config_dir
  reload_systemd
  cat <<EOF
install.sh: done. Next:
  systemctl enable --now agentd.socket        # started on the first client connection
  systemctl enable --now agentd-backup.timer  # optional: a daily backup, 7 kept
  (umask 077; cat > $CONFDIR/gemini-api-key)   # optional: paste the Gemini key, Ctrl-D
  usermod -aG agentd USER                     # let USER run agentctl
  agentctl status
EOF
}

install_instance() {
  local name=${1:-}
  [[ "$name" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "instance name must match [a-z0-9][a-z0-9_-]*: '$name'"
  [ -z "$DESTDIR" ] || die "instance: not with DESTDIR (it creates secrets on this machine)"
  require_root
  getent group agentd > /dev/null || die "group agentd is missing: run install.sh first"
  install_config "$SRC/etc/agentd.toml" "$CONFDIR/$name.toml"
  install -d -m 0700 -o root -g root "$CONFDIR/$name"
  generate_key "$CONFDIR/$name/db-key"
  cat <<EOF
install.sh: instance $name ready. Next:
  systemctl enable --now agentd@$name.socket
  agentctl --socket /run/agentd-$name/agentd.sock status
EOF
}

case "${1:-}" in
  "") install_all ;;
  instance) install_instance "${2:-}" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac
