#!/usr/bin/env bash
# make demo: bring up Kafka and PostgreSQL locally, create the topics and the
# schema, run the worker, publish from a simulated orchestrator, and show what
# happened. Kafka, PostgreSQL and the console stay up afterwards (`make down`
# stops them; `bash scripts/demo.sh stop-console` the console alone).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="$repo/.venv/bin"
state="${LEARNOPS_STATE_DIR:-$repo/.local}/demo"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The console a demo leaves running (`make down` stops it too, through this).
console_pid="$state/console.pid"
stop_console() {
  [ -f "$console_pid" ] || return 0
  local pid
  pid="$(cat "$console_pid")"
  # Only a console of ours: a stale file must not kill a process that reused the pid.
  if ps -p "$pid" -o args= 2>/dev/null | grep -q 'learnops serve'; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped the demo's console (pid $pid)"
  fi
  rm -f "$console_pid"
}
if [ "${1:-}" = stop-console ]; then
  stop_console
  exit 0
fi
mkdir -p "$state"

# The console's port, checked before minutes of demo rather than after them.
console_port="${LEARNOPS_CONSOLE_PORT:-8080}"
stop_console  # a previous demo's, which would hold the port
if "$bin/python" -c '
import socket, sys
with socket.socket() as s:
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$console_port"; then
  echo "port $console_port is taken by another program; LEARNOPS_CONSOLE_PORT=N make demo picks another"
  exit 1
fi

step "Kafka and PostgreSQL"
bash scripts/services.sh up
eval "$(bash scripts/services.sh env)"
export LEARNOPS_WEB_PORT="${LEARNOPS_WEB_PORT:-6066}"

step "Topics (from topics.yaml) and schema (numbered migrations)"
"$bin/learnops" topics create
"$bin/learnops" db migrate

step "Operator keys (commands are signed: docs/security.md#commands)"
# Fresh keys each run, registered in this database: the worker's own key (operator
# role, for the deployments the experiments stage starts) and an owner key for you
# to try `learnops policy …` with. The demo's walk-throughs enrol keys of their own.
keys="$state/keys-$(date +%s)"
mkdir -p "$keys"
"$bin/learnops" operator keys add --operator worker --generate --out "$keys/worker.pem" \
  --doer '*' --role operator --actor demo
"$bin/learnops" operator keys add --operator "${USER:-operator}" --generate \
  --out "$keys/operator.pem" --doer '*' --role owner --actor demo
export LEARNOPS_WORKER_KEY="$keys/worker.pem" LEARNOPS_OPERATOR_KEY="$keys/operator.pem"

step "The worker's signing key (it signs its canary decisions; docs/security.md)"
worker_key="$state/worker-key.pem"
rm -f "$worker_key"
"$bin/learnops" policy keys generate --out "$worker_key" --note "demo worker" --actor demo
export LEARNOPS_WORKER_SIGNING_KEY_FILE="$worker_key"

step "Worker"
log="$state/worker.log"
: > "$log"
# The worker logs in as learnops_worker: it writes rows, but cannot change the
# schema, rewrite the audit log or touch the keyring (docs/security.md).
DATABASE_URL="$LEARNOPS_WORKER_DATABASE_URL" "$bin/learnops" worker -l info >"$log" 2>&1 &
worker=$!
stop_worker() {
  kill -TERM "$worker" 2>/dev/null || return 0
  # Faust can hang in shutdown; give it 20 s, then kill it.
  for _ in $(seq 1 40); do kill -0 "$worker" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$worker" 2>/dev/null || true
}
trap stop_worker EXIT
for _ in $(seq 1 180); do
  grep -q '\[^Worker\]: Ready' "$log" && break
  kill -0 "$worker" 2>/dev/null || { echo "worker exited:"; tail -30 "$log"; exit 1; }
  sleep 0.5
done
grep -q '\[^Worker\]: Ready' "$log" || { echo "worker not ready after 90 s:"; tail -30 "$log"; exit 1; }
echo "worker ready (pid $worker, log $log, web http://127.0.0.1:$LEARNOPS_WEB_PORT)"

runs="${DEMO_RUNS:-1400}"
prefix="demo-$(date +%s)"
step "Simulated orchestrator"
"$bin/learnops" demo simulate --runs "$runs" --days 14 --bad 12 --redeliver 25 --run-prefix "$prefix"

step "What happened"
"$bin/learnops" demo report --expect-runs "$runs" --run-prefix "$prefix" --timeout 120

step "Canary: a better candidate walks its steps and is promoted, a worse one is rolled back"
"$bin/learnops" demo canary --timeout 240

step "The learning loop: regression → experiment request → experiment → replay → canary → promotion → skill card"
"$bin/learnops" demo experiments --timeout 240

step "Skill cards: what each doer is good and bad at (learning.skill-cards, skill_cards)"
"$bin/learnops" demo skills --min-runs 10 --timeout 60

step "Curated samples: datasets, rejects, redactions, and a PII scan"
# Every simulated run gives two samples: its document and a human note.
"$bin/learnops" demo curation --run-prefix "$prefix" --expect-samples "$((runs * 2))" --timeout 120

step "The bandit: a cheaper model as good as the large one → request → bandit propose → replay → canary → promotion"
"$bin/learnops" demo bandit --timeout 240

step "The operator console (read-only dashboard and JSON API)"
# As learnops_reader: the dashboard reads and can write nothing.
DATABASE_URL="$LEARNOPS_READER_DATABASE_URL" nohup "$bin/learnops" serve --host 127.0.0.1 --port "$console_port" >"$state/console.log" 2>&1 &
echo "$!" >"$console_pid"
console_up() {
  # Our process, alive and answering (not another program on the port; no proxy).
  kill -0 "$(cat "$console_pid")" 2>/dev/null && "$bin/python" -c '
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
opener.open(sys.argv[1], timeout=2)' "http://127.0.0.1:$console_port/healthz" 2>/dev/null &&
    kill -0 "$(cat "$console_pid")" 2>/dev/null
}
for _ in $(seq 1 60); do
  console_up && break
  kill -0 "$(cat "$console_pid")" 2>/dev/null || break
  sleep 0.5
done
if ! console_up; then
  echo "the console did not start on port $console_port (LEARNOPS_CONSOLE_PORT picks another):"
  tail -20 "$state/console.log"
  stop_console
  exit 1
fi
echo "Dashboard: http://127.0.0.1:$console_port/  (API: /api/…, OpenAPI: /openapi.json; log $state/console.log; stop: make down)"

step "Done"
echo "Kafka: $KAFKA_BOOTSTRAP_SERVERS   PostgreSQL: $DATABASE_URL"
echo "The demo's worker stops with this script; Kafka, PostgreSQL and the console run on."
echo "To look around and send commands, in your shell:"
# The same ports and state directory as this run, or a fresh shell points at the defaults.
for var in KAFKA_PORT KAFKA_CONTROLLER_PORT PG_PORT LEARNOPS_STATE_DIR LEARNOPS_WEB_PORT LEARNOPS_CONSOLE_PORT; do
  if [ -n "${!var:-}" ]; then printf '  export %s=%q\n' "$var" "${!var}"; fi
done
printf '  cd %q && eval "$(bash scripts/services.sh env)" && export PATH=%q:"$PATH"\n' "$repo" "$bin"
echo "  learnops topics describe · learnops policy list · learnops skills list · learnops dlq list · psql \"\$DATABASE_URL\""
printf '  export LEARNOPS_OPERATOR_KEY=%q   # sign commands as the demo owner\n' "$LEARNOPS_OPERATOR_KEY"
printf '  export LEARNOPS_WORKER_SIGNING_KEY_FILE=%q   # the worker'"'"'s key: learnops demo bandit verifies allocations with it\n' "$worker_key"
echo "  # commands (learnops policy …, bandit freeze) take effect only while a worker runs:"
printf '  DATABASE_URL="$LEARNOPS_WORKER_DATABASE_URL" LEARNOPS_WORKER_KEY=%q LEARNOPS_WORKER_SIGNING_KEY_FILE=%q learnops worker -l info &\n' \
  "$LEARNOPS_WORKER_KEY" "$worker_key"
echo "Stop the services and the console with: make down"
