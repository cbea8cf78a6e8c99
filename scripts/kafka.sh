#!/usr/bin/env bash
# kafka.sh — a throwaway single-node Apache Kafka (KRaft: one process is both
# broker and controller) on loopback, with no Docker.
#
#   scripts/kafka.sh up        fetch the jars once, format storage once, start, wait until it answers
#   scripts/kafka.sh down      stop it (SIGTERM, then SIGKILL after 20 s)
#   scripts/kafka.sh status    exit 0 when running and answering a metadata request, 1 otherwise
#   scripts/kafka.sh logs [N]  last N (default 100) lines of the broker log; `logs -f` follows it
#   scripts/kafka.sh bootstrap print the bootstrap address (host:port)
#
# The broker and its runtime dependencies come from Maven Central through Maven
# (a generated throwaway pom.xml), cached once per version. Progress goes to
# stderr; `up` ends with KAFKA_BOOTSTRAP_SERVERS=host:port on stdout.
#
# KAFKA_SASL=scram serves the client listener as SASL_PLAINTEXT with SCRAM-SHA-256
# (loopback only, so no TLS): the credentials of a broker user `admin` and a client
# user `learnops` are generated into <state>/kafka/scram/ and written into the
# storage when it is formatted, and `up` also prints KAFKA_SECURITY_PROTOCOL,
# KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD for the
# learnops settings. A state dir formatted without it cannot switch to it: use a new one.
#
# Environment:
#   KAFKA_VERSION          Apache Kafka version                         (4.1.1)
#   KAFKA_PORT             client listener on 127.0.0.1                 (19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1       (19093)
#   KAFKA_HEAP_OPTS        JVM heap options                             (-Xmx512m -Xms256m)
#   KAFKA_JVM_OPTS         more JVM options for the broker, e.g. the tests' short-lived
#                          profile "-XX:TieredStopAtLevel=1" (tests/services.py)  (none)
#   KAFKA_START_TIMEOUT    seconds `up` waits for the broker to answer  (60)
#   KAFKA_SASL             "scram" for SASL/SCRAM-SHA-256 on the client listener, else none
#   LEARNOPS_CACHE_DIR     downloaded jars            ($HOME/.cache/learnops)
#   LEARNOPS_STATE_DIR     data, config, log and pid  (<repo>/.local), this script uses ./kafka in it
#   LEARNOPS_AUTO_INSTALL  when root and not 0, apt-get installs a missing java or mvn (1)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
# Kafka 4.x logs through SLF4J 1.7 to Log4j 2 but leaves the binding to the
# distribution; log4j-slf4j-impl (not -slf4j2-impl) is the one for SLF4J 1.7.
# Keep it at the log4j-core version kafka-server depends on.
LOG4J_VERSION="${LOG4J_VERSION:-2.24.3}"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

CACHE_DIR="${LEARNOPS_CACHE_DIR:-$HOME/.cache/learnops}/kafka-$KAFKA_VERSION"
LIBS_DIR="$CACHE_DIR/libs"
LIBS_MARKER="$CACHE_DIR/libs.complete"

STATE_DIR="${LEARNOPS_STATE_DIR:-$REPO_ROOT/.local}/kafka"
DATA_DIR="$STATE_DIR/data"
SERVER_PROPERTIES="$STATE_DIR/server.properties"
BROKER_LOG4J="$STATE_DIR/log4j2-broker.properties"
TOOLS_LOG4J="$STATE_DIR/log4j2-tools.properties"
TOOLS_CLIENT_PROPERTIES="$STATE_DIR/tools-client.properties"
LOG_FILE="$STATE_DIR/kafka.log"
PID_FILE="$STATE_DIR/kafka.pid"

BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

KAFKA_SASL="${KAFKA_SASL:-}"
[[ -z "$KAFKA_SASL" || "$KAFKA_SASL" == scram ]] ||
    { printf 'kafka: error: KAFKA_SASL=%s; the one choice is scram\n' "$KAFKA_SASL" >&2; exit 64; }
SCRAM_DIR="$STATE_DIR/scram"
SCRAM_MECHANISM=SCRAM-SHA-256
CLIENT_USER=learnops

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { local code="$1"; shift; say "error: $*"; exit "$code"; }

# --- tools ---------------------------------------------------------------------

ensure_tools() {
    local missing=()
    command -v java >/dev/null 2>&1 || missing+=(java)
    command -v mvn >/dev/null 2>&1 || missing+=(mvn)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local names="${missing[*]}"
    names="${names// / and }"
    if [[ $EUID -eq 0 && "${LEARNOPS_AUTO_INSTALL:-1}" != 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "$names not found; installing openjdk-17-jre-headless and maven with apt-get (LEARNOPS_AUTO_INSTALL=0 to stop this)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >&2
        command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && return 0
    fi
    die 2 "$names not found on PATH: Kafka needs Java 17+ and Maven to fetch it." \
        "On Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven"
}

# Kafka 4 brokers need Java 17 or later.
check_java_version() {
    local spec
    spec="$(java -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')"
    [[ "$spec" =~ ^[0-9]+$ ]] && ((spec >= 17)) && return 0
    die 2 "java on PATH is version ${spec:-unknown}; Kafka $KAFKA_VERSION needs 17 or later" \
        "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
}

# --- jars ----------------------------------------------------------------------

# The throwaway pom: the broker, the admin tools (for the readiness check and for
# people), and the logging binding. kafka-tools drags in Kafka Connect's REST
# server (Jetty, Jersey), which the tools we use never load, so it is excluded.
write_pom() {
    cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>learnops.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Download into a scratch dir and move it into place, then write the marker: a
# marker that is missing or names another pom means "download again". A lock
# keeps two concurrent `up`s from swapping the jars under each other.
ensure_libs() {
    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/.lock"
    flock -w 600 9 || die 1 "timed out waiting for another download into $CACHE_DIR"
    local work pom_sum
    work="$(mktemp -d "$CACHE_DIR/fetch.XXXXXX")"
    # shellcheck disable=SC2064  # expand $work now: it is local to this function
    trap "rm -rf '$work'" EXIT
    write_pom "$work/pom.xml"
    pom_sum="$(sha256sum "$work/pom.xml" | cut -d' ' -f1)"
    if [[ -f "$LIBS_MARKER" && "$(cat "$LIBS_MARKER")" == "$pom_sum" && -d "$LIBS_DIR" ]]; then
        exec 9>&-
        return 0
    fi
    say "fetching Apache Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central (once)"
    if ! mvn -q -B -Dstyle.color=never -f "$work/pom.xml" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1; then
        cat "$work/mvn.log" >&2
        die 1 "mvn could not fetch the Kafka jars (output above)"
    fi
    rm -f "$LIBS_MARKER"
    rm -rf "$LIBS_DIR"
    mv "$work/libs" "$LIBS_DIR"
    cp "$work/pom.xml" "$CACHE_DIR/pom.xml"
    printf '%s\n' "$pom_sum" >"$LIBS_MARKER"
    exec 9>&-
    say "cached $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS_DIR" | cut -f1)) in $LIBS_DIR"
}

# --- SASL/SCRAM -----------------------------------------------------------------

# The password of a SCRAM user (admin, learnops), generated once.
scram_password() {
    local file="$SCRAM_DIR/$1"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$SCRAM_DIR"
        chmod 700 "$SCRAM_DIR"
        # 128 random bits as hex (od reads exactly 16 bytes: no SIGPIPE under pipefail).
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$file")
    fi
    cat "$file"
}

jaas_login() {
    printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' \
        "$1" "$(scram_password "$1")"
}

# The client listener's part of server.properties.
listener_config() {
    if [[ "$KAFKA_SASL" != scram ]]; then
        cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
EOF
        return 0
    fi
    cat <<EOF
listeners=SASL_PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$(jaas_login admin)
EOF
}

# What the admin tools (the readiness check) need to log in.
tools_security_config() {
    [[ "$KAFKA_SASL" == scram ]] || return 0
    cat <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=$SCRAM_MECHANISM
sasl.jaas.config=$(jaas_login admin)
EOF
}

# --- config --------------------------------------------------------------------

write_config() {
    mkdir -p "$STATE_DIR" "$DATA_DIR"
    cat >"$SERVER_PROPERTIES" <<EOF
# Written by scripts/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
$(listener_config)
log.dirs=$DATA_DIR

# Topics come from topics.yaml (learnops topics create), never from a producer
# that happens to write first with the wrong partition count.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# One broker: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests start consumers often; do not hold the first rebalance back 3 s.
group.initial.rebalance.delay.ms=0
EOF
    cat >"$BROKER_LOG4J" <<'EOF'
# Broker log: INFO to stdout, which kafka.sh sends to kafka.log.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
    cat >"$TOOLS_LOG4J" <<'EOF'
# Command-line tools: warnings and errors only, to stderr.
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
    # Short admin-client timeouts so a check of a broker that is not there
    # fails in seconds, not after the 60 s default.
    (umask 077 && cat >"$TOOLS_CLIENT_PROPERTIES" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=8000
$(tools_security_config)
EOF
    )
}

run_tool() {
    java -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS_DIR/*" "$@"
}

format_storage_once() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        if [[ "$KAFKA_SASL" == scram && ! -f "$SCRAM_DIR/.formatted" ]]; then
            die 1 "$DATA_DIR was formatted without SCRAM users; KAFKA_SASL=scram needs a new" \
                "LEARNOPS_STATE_DIR (or scripts/kafka.sh down and remove $STATE_DIR)"
        fi
        return 0
    fi
    local cluster_id scram=()
    cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)"
    if [[ "$KAFKA_SASL" == scram ]]; then
        # KRaft keeps SCRAM credentials in the metadata log: they go in at format time.
        local user
        for user in admin "$CLIENT_USER"; do
            scram+=(--add-scram "$SCRAM_MECHANISM=[name=$user,password=$(scram_password "$user")]")
        done
    fi
    say "formatting $DATA_DIR (cluster id $cluster_id${KAFKA_SASL:+, SASL/$SCRAM_MECHANISM users admin and $CLIENT_USER})"
    run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPERTIES" \
        "${scram[@]}" >&2
    [[ "$KAFKA_SASL" == scram ]] && touch "$SCRAM_DIR/.formatted"
    return 0
}

# The settings a learnops process needs for this broker, as VAR=value lines.
print_settings() {
    printf 'KAFKA_BOOTSTRAP_SERVERS=%s\n' "$BOOTSTRAP"
    [[ "$KAFKA_SASL" == scram ]] || return 0
    printf 'KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\nKAFKA_SASL_MECHANISM=%s\n' "$SCRAM_MECHANISM"
    printf 'KAFKA_SASL_USERNAME=%s\nKAFKA_SASL_PASSWORD=%s\n' "$CLIENT_USER" \
        "$(scram_password "$CLIENT_USER")"
}

# --- process -------------------------------------------------------------------

read_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    printf '%s' "$pid"
}

# Running means: the pid in the pid file is alive AND is our broker (a recycled
# pid that now belongs to something else does not count).
running_pid() {
    local pid
    pid="$(read_pid)" || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $SERVER_PROPERTIES" || return 1
    printf '%s' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/${1:-$KAFKA_PORT}") 2>/dev/null
}

# A metadata round trip through the admin client: the broker is up, unfenced
# and serving requests, not only listening.
answers_metadata() {
    port_open || return 1
    timeout 30 java -Xmx128m -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS_DIR/*" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --command-config "$TOOLS_CLIENT_PROPERTIES" --list >/dev/null 2>&1
}

tail_log() {
    [[ -f "$LOG_FILE" ]] && tail -n "${1:-30}" "$LOG_FILE" >&2
    return 0
}

# One `up` or `down` at a time per state dir. The broker must not inherit the
# lock's descriptor (it would hold the lock for its whole life): see 8>&- below.
lock_state() {
    mkdir -p "$STATE_DIR"
    exec 8>"$STATE_DIR/.lock"
    flock -w 120 8 || die 1 "another kafka.sh up/down is running on $STATE_DIR"
}

cmd_up() {
    ensure_tools
    lock_state
    local pid
    if pid="$(running_pid)"; then
        if answers_metadata; then
            say "already running (pid $pid) on $BOOTSTRAP"
            print_settings
            return 0
        fi
        say "pid $pid is running but not answering yet; waiting for it"
    else
        if port_open "$KAFKA_PORT"; then
            die 1 "127.0.0.1:$KAFKA_PORT is taken by another process; stop it or set KAFKA_PORT"
        fi
        if port_open "$KAFKA_CONTROLLER_PORT"; then
            die 1 "127.0.0.1:$KAFKA_CONTROLLER_PORT is taken by another process; stop it or set KAFKA_CONTROLLER_PORT"
        fi
        check_java_version
        ensure_libs
        write_config
        format_storage_once
        [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
        say "starting broker on $BOOTSTRAP (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT), log $LOG_FILE"
        # setsid: the broker gets its own session, so it outlives this shell and
        # a Ctrl-C in the terminal that ran `up` does not reach it.
        # KAFKA_JVM_OPTS comes after the fixed flags, so that its flags win.
        # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS hold several options
        setsid nohup java $KAFKA_HEAP_OPTS \
            -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
            -Djava.awt.headless=true $KAFKA_JVM_OPTS \
            -Dlog4j2.configurationFile="$BROKER_LOG4J" \
            -cp "$LIBS_DIR/*" kafka.Kafka "$SERVER_PROPERTIES" \
            >>"$LOG_FILE" 2>&1 </dev/null 8>&- 9>&- &
        pid=$!
        printf '%s\n' "$pid" >"$PID_FILE"
    fi

    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until answers_metadata; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail_log 30
            rm -f "$PID_FILE"
            die 1 "the broker exited during start-up (last 30 log lines above, full log: $LOG_FILE)"
        fi
        if ((SECONDS >= deadline)); then
            tail_log 30
            die 1 "the broker did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s" \
                "(last 30 log lines above; it is still running as pid $pid: scripts/kafka.sh down)"
        fi
        sleep 0.5
    done
    say "ready (pid $pid)"
    print_settings
}

cmd_down() {
    lock_state
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    say "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 40)); do
        sleep 0.5
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still running after 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -f "$PID_FILE"
    say "stopped"
}

cmd_status() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running"
        return 1
    fi
    if [[ ! -d "$LIBS_DIR" ]] || ! answers_metadata; then
        say "running (pid $pid) but not answering on $BOOTSTRAP"
        return 1
    fi
    say "running (pid $pid) and answering on $BOOTSTRAP"
}

cmd_logs() {
    [[ -f "$LOG_FILE" ]] || die 1 "no log yet at $LOG_FILE"
    if [[ "${1:-}" == "-f" ]]; then
        exec tail -n 50 -F "$LOG_FILE"
    fi
    tail -n "${1:-100}" "$LOG_FILE"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) shift; cmd_logs "$@" ;;
    bootstrap) printf '%s\n' "$BOOTSTRAP" ;;
    *)
        printf 'usage: %s up|down|status|logs [N|-f]|bootstrap\n' "$0" >&2
        exit 64
        ;;
esac
