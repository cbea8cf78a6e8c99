#!/usr/bin/env bash
# services.sh — the local Kafka broker and PostgreSQL together, with no Docker.
#
#   scripts/services.sh up      start both (each is idempotent), print their settings
#   scripts/services.sh down    stop both
#   scripts/services.sh status  exit 0 when both run and answer, 1 otherwise
#   scripts/services.sh env     print `export ...` lines for eval:
#                               eval "$(scripts/services.sh env)"
#                               (DATABASE_URL is the schema owner's; LEARNOPS_WORKER_,
#                               _READER_ and _KEYADMIN_DATABASE_URL the other roles')
#
# Honours everything kafka.sh and postgres.sh honour (KAFKA_PORT, PG_PORT,
# LEARNOPS_STATE_DIR, LEARNOPS_CACHE_DIR, LEARNOPS_AUTO_INSTALL, ...).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

cmd_env() {
    printf 'export KAFKA_BOOTSTRAP_SERVERS=%s\n' "$(bash "$SCRIPTS/kafka.sh" bootstrap)"
    printf 'export DATABASE_URL=%s\n' "$(bash "$SCRIPTS/postgres.sh" url)"
    local role
    for role in worker reader keyadmin; do
        printf 'export LEARNOPS_%s_DATABASE_URL=%s\n' "${role^^}" \
            "$(bash "$SCRIPTS/postgres.sh" url "$role")"
    done
}

case "${1:-}" in
    up)
        # PostgreSQL first: it is ready in about a second, Kafka takes several.
        bash "$SCRIPTS/postgres.sh" up
        bash "$SCRIPTS/kafka.sh" up
        ;;
    down)
        rc=0
        bash "$SCRIPTS/kafka.sh" down || rc=$?
        bash "$SCRIPTS/postgres.sh" down || rc=$?
        exit "$rc"
        ;;
    status)
        rc=0
        bash "$SCRIPTS/kafka.sh" status || rc=1
        bash "$SCRIPTS/postgres.sh" status || rc=1
        exit "$rc"
        ;;
    env) cmd_env ;;
    *)
        printf 'usage: %s up|down|status|env\n' "$0" >&2
        exit 64
        ;;
esac
