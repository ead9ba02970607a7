#!/usr/bin/env bash
# A throwaway PostgreSQL (Debian's `postgresql` package) on 127.0.0.1 for the outbox tests.
#
#   postgres.sh start   install the package if missing (apt, as root), initdb into the state dir, start on a free
#                       loopback port; the last stdout line is the SQLAlchemy URL
#   postgres.sh stop    stop it and remove the state dir
#
# Environment:
#   MICROBUS_POSTGRES_STATE  state dir of this instance (default: a new temp dir on start; required for stop,
#                            or the dir named in $TMPDIR/microbus-postgres.last); one per concurrent instance
#   MICROBUS_POSTGRES_NO_INSTALL=1  never apt-get install (exit 4 when the binaries are missing)
set -euo pipefail

LAST="${TMPDIR:-/tmp}/microbus-postgres.last"

bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && { echo "$dir"; return 0; }
  done
  return 1
}

install() {
  bindir >/dev/null && return 0
  if [[ "${MICROBUS_POSTGRES_NO_INSTALL:-0}" == 1 || "$(id -u)" != 0 ]]; then
    echo "postgres.sh: PostgreSQL is not installed (apt-get install -y postgresql, as root)" >&2
    exit 4
  fi
  echo "postgres.sh: installing Debian's postgresql" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  bindir >/dev/null || { echo "postgres.sh: no initdb after installing postgresql" >&2; exit 4; }
}

# initdb and the server refuse to run as root: run them as the package's postgres user then.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  install
  local bin state port
  bin="$(bindir)"
  state="${MICROBUS_POSTGRES_STATE:-$(mktemp -d "${TMPDIR:-/tmp}/microbus-postgres.XXXXXX")}"
  mkdir -p "$state"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$state"
  chmod 700 "$state"
  as_owner "$bin/initdb" -D "$state/data" -U microbus --auth=trust -E UTF8 --no-sync >"$state/initdb.log" 2>&1 \
    || { cat "$state/initdb.log" >&2; exit 1; }
  port="$(free_port)"
  as_owner "$bin/pg_ctl" -D "$state/data" -l "$state/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $state -c fsync=off -c max_connections=50" start >&2 \
    || { cat "$state/server.log" >&2; exit 1; }
  echo "$state" >"$LAST"
  echo "postgresql+psycopg://microbus@127.0.0.1:$port/postgres"
}

stop() {
  local bin state
  state="${MICROBUS_POSTGRES_STATE:-$(cat "$LAST" 2>/dev/null || true)}"
  [[ -n "$state" && -d "$state/data" ]] || { echo "postgres.sh: no instance to stop" >&2; return 0; }
  bin="$(bindir)"
  as_owner "$bin/pg_ctl" -D "$state/data" -m fast -w stop >&2 || true
  rm -rf "$state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
