#!/usr/bin/env bash
# postgres.sh — a throwaway PostgreSQL cluster on 127.0.0.1 for development and
# tests, run from Debian's server binaries with no Docker.
#
#   scripts/postgres.sh up      create the cluster once, start it, wait for pg_isready,
#                               ensure the roles and database learnops, print DATABASE_URL=...
#                               and LEARNOPS_<ROLE>_DATABASE_URL=... for the other roles
#   scripts/postgres.sh down    stop it (pg_ctl stop -m fast)
#   scripts/postgres.sh status  exit 0 when running and accepting connections, 1 otherwise
#   scripts/postgres.sh url [ROLE]  print a connection URL: owner (the default), worker,
#                               reader or keyadmin (docs/security.md, "Database roles")
#   scripts/postgres.sh logs [N] last N (default 100) lines of the server log
#
# initdb and pg_ctl refuse to run as root, so as root they run as the `postgres`
# user (runuser), which must be able to reach the state dir; when it cannot (a
# parent directory it may not enter), a state dir under /var/tmp is used and
# named. Progress goes to stderr; `up` ends with DATABASE_URL=... on stdout.
#
# Every role, the postgres superuser too, logs in with a password (scram-sha-256,
# over TCP and the socket alike; nothing is trusted). The owner `learnops` keeps
# the development password `learnops` (the settings' development default); the
# superuser and the roles learnops_worker, learnops_reader and learnops_keyadmin
# get random passwords, generated once into <state>/postgres/passwords/ (mode 0600).
#
# Environment:
#   PG_PORT                port on 127.0.0.1                               (15432)
#   PG_BIN_DIR             server binaries  (highest /usr/lib/postgresql/<version>/bin)
#   PG_START_TIMEOUT       seconds `up` waits for pg_isready               (60)
#   LEARNOPS_STATE_DIR     data, log and socket dir (<repo>/.local), this script uses ./postgres in it
#   LEARNOPS_AUTO_INSTALL  when root and not 0, apt-get installs a missing server (1)
set -euo pipefail
# runuser and apt-get live in the sbin directories, which a minimal PATH (env -i,
# cron, some CI runners) leaves out: without runuser, root picked the wrong state dir.
PATH="$PATH:/usr/sbin:/sbin"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PG_PORT="${PG_PORT:-15432}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
DB_NAME=learnops
DB_USER=learnops
DB_PASSWORD=learnops
# The least-privilege roles (migration 021 grants them what they may do).
ROLES=(worker reader keyadmin)
OS_USER=postgres  # the account the server runs as when this script runs as root

say() { printf 'postgres: %s\n' "$*" >&2; }
die() { local code="$1"; shift; say "error: $*"; exit "$code"; }

# --- server binaries -----------------------------------------------------------

find_bin_dir() {
    if [[ -n "${PG_BIN_DIR:-}" ]]; then
        [[ -x "$PG_BIN_DIR/initdb" ]] || return 1
        printf '%s' "$PG_BIN_DIR"
        return 0
    fi
    local initdb
    initdb="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -V | tail -n 1)"
    [[ -n "$initdb" ]] || return 1
    dirname "$initdb"
}

ensure_server() {
    if BIN_DIR="$(find_bin_dir)"; then
        return 0
    fi
    if [[ $EUID -eq 0 && "${LEARNOPS_AUTO_INSTALL:-1}" != 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "no PostgreSQL server binaries found; installing Debian's postgresql with apt-get (LEARNOPS_AUTO_INSTALL=0 to stop this)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        BIN_DIR="$(find_bin_dir)" && return 0
        die 2 "apt-get installed postgresql but no initdb appeared under /usr/lib/postgresql/*/bin"
    fi
    die 2 "no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin${PG_BIN_DIR:+ or in PG_BIN_DIR=$PG_BIN_DIR}." \
        "On Debian/Ubuntu, as root: apt-get install postgresql (or set PG_BIN_DIR)"
}

# --- who runs the server, and where --------------------------------------------

as_server_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$OS_USER" -- "$@"
    else
        "$@"
    fi
}

# The state dir must be one the server's account can enter. As root the repo may
# sit under a directory that `postgres` may not traverse; then use a dir under
# /var/tmp named after the wanted path, so every subcommand finds the same one.
resolve_state_dir() {
    local root="${LEARNOPS_STATE_DIR:-$REPO_ROOT/.local}"
    mkdir -p "$root"
    if [[ $EUID -eq 0 ]]; then
        id -u "$OS_USER" >/dev/null 2>&1 ||
            die 2 "running as root, but there is no '$OS_USER' user to run the server as (Debian's postgresql package creates it)"
        if ! runuser -u "$OS_USER" -- test -x "$root" -a -r "$root"; then
            local fallback
            fallback="/var/tmp/learnops-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
            say "the '$OS_USER' user cannot enter $root; using $fallback/postgres instead"
            mkdir -p "$fallback"
            chmod 755 "$fallback"
            root="$fallback"
        fi
    fi
    PG_STATE="$root/postgres"
    DATA_DIR="$PG_STATE/data"
    SOCKET_DIR="$PG_STATE/run"
    LOG_FILE="$PG_STATE/postgres.log"
}

prepare_state_dir() {
    mkdir -p "$PG_STATE" "$SOCKET_DIR"
    if [[ $EUID -eq 0 ]]; then
        find "$PG_STATE" ! -user "$OS_USER" -exec chown "$OS_USER:" {} +
    fi
    chmod 700 "$PG_STATE"
}

# --- cluster -------------------------------------------------------------------

write_file_as_server_user() {
    as_server_user tee "$1" >/dev/null
}

init_cluster_once() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] && return 0
    say "creating a cluster in $DATA_DIR ($("$BIN_DIR/postgres" --version))"
    # -U postgres: the superuser has the same name whoever runs the script.
    password_of superuser >/dev/null
    as_server_user "$BIN_DIR/initdb" -D "$DATA_DIR" -U postgres --auth=scram-sha-256 \
        --pwfile="$(password_file superuser)" \
        --encoding=UTF8 --no-locale --no-sync >"$PG_STATE/initdb.log" 2>&1 ||
        { cat "$PG_STATE/initdb.log" >&2; die 1 "initdb failed (output above)"; }
    printf "\ninclude_if_exists = 'learnops.conf'\n" |
        as_server_user tee -a "$DATA_DIR/postgresql.conf" >/dev/null
}

# Every role gives its password, the superuser too, so a wrong DATABASE_URL
# fails here as it would elsewhere. Rewritten on every start: a cluster made by
# an older version of this script (which trusted the superuser) is tightened.
write_hba() {
    write_file_as_server_user "$DATA_DIR/pg_hba.conf" <<'EOF'
# Written by scripts/postgres.sh on every start; edit the script, not this file.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
EOF
}

# --- passwords -----------------------------------------------------------------

password_file() { printf '%s/passwords/%s' "$PG_STATE" "$1"; }

# The password of superuser, worker, reader or keyadmin, generated once.
password_of() {
    local file
    file="$(password_file "$1")"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$(dirname "$file")"
        chmod 700 "$(dirname "$file")"
        # 128 random bits as hex (od reads exactly 16 bytes: no SIGPIPE under pipefail).
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$file")
        if [[ $EUID -eq 0 ]]; then
            chown -R "$OS_USER:" "$(dirname "$file")"
        fi
    fi
    cat "$file"
}

role_name() {
    case "$1" in
        owner) printf '%s' "$DB_USER" ;;
        worker | reader | keyadmin) printf 'learnops_%s' "$1" ;;
        *) die 64 "unknown role '$1' (owner, worker, reader or keyadmin)" ;;
    esac
}

url_of() {
    local password="$DB_PASSWORD"
    [[ "$1" == owner ]] || password="$(password_of "$1")"
    printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "$(role_name "$1")" "$password" "$PG_PORT" "$DB_NAME"
}

# The superuser's password is set with the server stopped (single-user mode), so
# a cluster made when the superuser was trusted gets one without trusting it again.
set_superuser_password_once() {
    local marker
    marker="$(password_file .superuser-set)"
    [[ -f "$marker" ]] && return 0
    printf "ALTER ROLE postgres PASSWORD '%s';\n" "$(password_of superuser)" |
        as_server_user "$BIN_DIR/postgres" --single -D "$DATA_DIR" postgres \
            >"$PG_STATE/single-user.log" 2>&1 ||
        { cat "$PG_STATE/single-user.log" >&2; die 1 "could not set the superuser's password (output above)"; }
    touch "$marker"
}

# Rewritten on every start so a new PG_PORT takes effect.
write_settings() {
    local socket_dirs="$SOCKET_DIR"
    # A Unix socket path is limited to 107 bytes; past that, TCP only.
    if ((${#SOCKET_DIR} + 18 > 107)); then
        say "socket dir path too long for a Unix socket; TCP only"
        socket_dirs=""
    fi
    write_file_as_server_user "$DATA_DIR/learnops.conf" <<EOF
# Written by scripts/postgres.sh on every start; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$socket_dirs'
max_connections = 200

# Throwaway test cluster: durability is traded for speed. A crash loses or
# corrupts data, which is fine here and never fine anywhere else.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

is_running() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] || return 1
    as_server_user "$BIN_DIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1
}

is_ready() {
    "$BIN_DIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -t 2
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null
}

# Runs the SQL on stdin as the superuser.
psql_admin() {
    PGPASSWORD="$(password_of superuser)" "$BIN_DIR/psql" -h 127.0.0.1 -p "$PG_PORT" \
        -U postgres -d postgres -X -q -v ON_ERROR_STOP=1
}

ensure_role_and_database() {
    # CREATEDB so integration tests may create a scratch database of their own.
    psql_admin <<EOF
SELECT format('CREATE ROLE %I LOGIN', '$DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER') \gexec
ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB_NAME') \gexec
EOF
    # The least-privilege roles log in and own nothing; migration 021 grants them.
    local role name
    for role in "${ROLES[@]}"; do
        name="$(role_name "$role")"
        psql_admin <<EOF
SELECT format('CREATE ROLE %I LOGIN', '$name')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$name') \gexec
ALTER ROLE $name LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$(password_of "$role")';
EOF
    done
}

print_urls() {
    printf 'DATABASE_URL=%s\n' "$(url_of owner)"
    local role
    for role in "${ROLES[@]}"; do
        printf 'LEARNOPS_%s_DATABASE_URL=%s\n' "${role^^}" "$(url_of "$role")"
    done
}

# One `up` or `down` at a time per state dir. The server must not inherit the
# lock's descriptor (it would hold the lock for its whole life): see 8>&- below.
lock_state() {
    mkdir -p "$PG_STATE"
    exec 8>"$PG_STATE/.lock"
    flock -w 120 8 || die 1 "another postgres.sh up/down is running on $PG_STATE"
}

cmd_up() {
    ensure_server
    resolve_state_dir
    lock_state
    if is_running; then
        say "already running on 127.0.0.1:$PG_PORT ($DATA_DIR)"
    else
        if port_open; then
            die 1 "127.0.0.1:$PG_PORT is taken by another process; stop it or set PG_PORT"
        fi
        prepare_state_dir
        init_cluster_once
        write_settings
        write_hba
        set_superuser_password_once
        say "starting on 127.0.0.1:$PG_PORT, log $LOG_FILE"
        as_server_user "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" \
            -w -t "$PG_START_TIMEOUT" start >/dev/null 8>&- ||
            { tail -n 30 "$LOG_FILE" >&2 || true; die 1 "pg_ctl start failed (last 30 log lines above)"; }
    fi
    local deadline=$((SECONDS + PG_START_TIMEOUT))
    until is_ready; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG_FILE" >&2 || true
            die 1 "pg_isready did not say yes within ${PG_START_TIMEOUT}s (last 30 log lines above)"
        fi
        sleep 0.2
    done
    ensure_role_and_database
    say "ready"
    print_urls
}

cmd_down() {
    ensure_server
    resolve_state_dir
    lock_state
    if ! is_running; then
        say "not running"
        return 0
    fi
    as_server_user "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -m fast -w -t 30 stop >/dev/null
    say "stopped"
}

cmd_status() {
    ensure_server
    resolve_state_dir
    if ! is_running; then
        say "not running"
        return 1
    fi
    if ! is_ready; then
        say "running ($DATA_DIR) but not accepting connections on 127.0.0.1:$PG_PORT"
        return 1
    fi
    say "running and accepting connections on 127.0.0.1:$PG_PORT ($DATA_DIR)"
}

cmd_logs() {
    resolve_state_dir
    [[ -f "$LOG_FILE" ]] || die 1 "no log yet at $LOG_FILE"
    tail -n "${1:-100}" "$LOG_FILE"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url)
        resolve_state_dir
        url_of "${2:-owner}"
        printf '\n'
        ;;
    logs) shift; cmd_logs "$@" ;;
    *)
        printf 'usage: %s up|down|status|url [ROLE]|logs [N]\n' "$0" >&2
        exit 64
        ;;
esac
