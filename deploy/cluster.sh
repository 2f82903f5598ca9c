#!/usr/bin/env bash
# Local Flink and Spark session clusters for Beam's portable runners, and a local HDFS
# (see deploy/README.md).
#
#   deploy/cluster.sh install                       # Flink/Spark via pip --target, job-server and HDFS jars via Maven
#   deploy/cluster.sh flink start [--taskmanagers N] [--slots N]
#   deploy/cluster.sh flink revive                  # restart TaskManagers that died, as a supervisor would
#   deploy/cluster.sh spark start [--cores N] [--memory 2g]
#   deploy/cluster.sh hdfs start
#   deploy/cluster.sh flink|spark|hdfs stop|status|args [--per-pipeline]
#   deploy/cluster.sh all stop|status
#
# Everything lives under .cache/clusters/ (git-ignored): dist/ (distributions), jars/ (job servers,
# HDFS), run/ (pid files, generated configs, artifacts), logs/, hdfs/ (the HDFS's data).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CLUSTER_CACHE_DIR:-$REPO/.cache/clusters}"
RUN="$CACHE/run"
LOGS="$CACHE/logs"
DIST="$CACHE/dist"
JARS="$CACHE/jars"
VENV_PY="${CLUSTER_PYTHON:-$REPO/.venv/bin/python}"

BEAM_VERSION=2.62.0
FLINK_VERSION=1.19.3
FLINK_MINOR=1.19
SPARK_VERSION=3.5.7
HADOOP_VERSION=3.4.1

# ---- ports / sizes (override with environment variables) -------------------------------------
HOST="${CLUSTER_HOST:-127.0.0.1}"                        # every bindable service binds here
FLINK_REST_PORT="${FLINK_REST_PORT:-8081}"
FLINK_RPC_PORT="${FLINK_RPC_PORT:-6123}"
FLINK_BLOB_PORT="${FLINK_BLOB_PORT:-6124}"
FLINK_JOB_PORT="${FLINK_JOB_PORT:-8099}"
FLINK_ARTIFACT_PORT="${FLINK_ARTIFACT_PORT:-8098}"
# The worker pools are not on Beam's usual 50000/50001: those lie in Linux's ephemeral range
# (32768-60999), where any outgoing connection may hold them (busy WebHDFS traffic did) and the
# pool then cannot bind.
FLINK_WORKER_POOL_PORT="${FLINK_WORKER_POOL_PORT:-8097}"
FLINK_RESTART_ATTEMPTS="${FLINK_RESTART_ATTEMPTS:-5}"       # a failed job's restarts ...
FLINK_RESTART_DELAY="${FLINK_RESTART_DELAY:-5 s}"          # ... and the wait before each
FLINK_TASKMANAGERS="${FLINK_TASKMANAGERS:-1}"
FLINK_SLOTS="${FLINK_SLOTS:-2}"
FLINK_JM_MEMORY="${FLINK_JM_MEMORY:-1024m}"
FLINK_TM_MEMORY="${FLINK_TM_MEMORY:-1600m}"
FLINK_JOB_SERVER_HEAP="${FLINK_JOB_SERVER_HEAP:-768m}"

SPARK_MASTER_PORT="${SPARK_MASTER_PORT:-7077}"
SPARK_MASTER_WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8080}"
SPARK_WORKER_PORT="${SPARK_WORKER_PORT:-7078}"
SPARK_WORKER_WEBUI_PORT="${SPARK_WORKER_WEBUI_PORT:-8082}"   # not 8081: that is Flink's REST port
SPARK_DRIVER_UI_PORT="${SPARK_DRIVER_UI_PORT:-4040}"
SPARK_JOB_PORT="${SPARK_JOB_PORT:-8199}"
SPARK_ARTIFACT_PORT="${SPARK_ARTIFACT_PORT:-8198}"
SPARK_WORKER_POOL_PORT="${SPARK_WORKER_POOL_PORT:-8197}"
SPARK_WORKER_CORES="${SPARK_WORKER_CORES:-2}"
SPARK_WORKER_MEMORY="${SPARK_WORKER_MEMORY:-2g}"
SPARK_EXECUTOR_MEMORY="${SPARK_EXECUTOR_MEMORY:-1g}"
SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-512m}"
SPARK_JOB_SERVER_HEAP="${SPARK_JOB_SERVER_HEAP:-1g}"
# true: the job server keeps one SparkContext (one Spark application, its executor and staged jars)
# for all pipelines -- much faster per pipeline, but the application stays RUNNING until stop.
SPARK_REUSE_CONTEXT="${SPARK_REUSE_CONTEXT:-false}"
SPARK_ENV_CACHE_MILLIS="${SPARK_ENV_CACHE_MILLIS:-60000}"

# HDFS: Hadoop's default ports (none is Flink's or Spark's).
HDFS_NAMENODE_PORT="${HDFS_NAMENODE_PORT:-8020}"
HDFS_HTTP_PORT="${HDFS_HTTP_PORT:-9870}"                 # NameNode web UI and WebHDFS: Beam's --hdfs_port
HDFS_DATANODE_PORT="${HDFS_DATANODE_PORT:-9866}"
HDFS_DATANODE_HTTP_PORT="${HDFS_DATANODE_HTTP_PORT:-9864}"  # WebHDFS reads and writes are redirected here
HDFS_DATANODE_IPC_PORT="${HDFS_DATANODE_IPC_PORT:-9867}"
HDFS_USER="${HDFS_USER:-$(id -un)}"                      # Beam's --hdfs_user (permissions are off)
HDFS_HEAP="${HDFS_HEAP:-512m}"
HDFS_DATA="${HDFS_DATA_DIR:-$CACHE/hdfs}"

START_TIMEOUT="${CLUSTER_START_TIMEOUT:-240}"
STOP_TIMEOUT="${CLUSTER_STOP_TIMEOUT:-30}"

FLINK_HOME="$DIST/flink-$FLINK_VERSION/pyflink"
SPARK_HOME_DIR="$DIST/spark-$SPARK_VERSION/pyspark"
FLINK_JOB_SERVER_JAR="$JARS/beam-flink-$FLINK_MINOR-job-server-$BEAM_VERSION.jar"
SPARK_JOB_SERVER_JAR="$JARS/beam-spark-3-job-server-$BEAM_VERSION.jar"
HDFS_JAR="$JARS/local-hdfs-$HADOOP_VERSION.jar"

# Java 17 module opens needed by Spark's driver (Spark's JavaModuleOptions) and Flink's client code.
JAVA17_OPENS=(
  -XX:+IgnoreUnrecognizedVMOptions
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.lang.invoke=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
  --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/sun.nio.cs=ALL-UNNAMED
  --add-opens=java.base/sun.security.action=ALL-UNNAMED
  --add-opens=java.base/sun.util.calendar=ALL-UNNAMED
  --add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  -Djdk.reflect.useDirectMethodHandle=false
)

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"
  else JAVA="$(command -v java || true)"; fi
  [[ -n "$JAVA" ]] || die "java not found (install a JDK 11/17 or set JAVA_HOME)"
  if [[ -z "${JAVA_HOME:-}" ]]; then JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$JAVA")")")"; fi
  export JAVA_HOME
}

# ================================ install ======================================================
pip_target() {  # pip_target DIR PKG... : pip install --no-deps --target DIR, once (marker file)
  local dir="$1"; shift
  if [[ -f "$dir/.complete" ]]; then log "reuse $dir"; return; fi
  log "pip install --target $dir $*"
  rm -rf "$dir.tmp" && mkdir -p "$(dirname "$dir")"
  "$VENV_PY" -m pip install -q --disable-pip-version-check --no-deps --no-compile \
    --target "$dir.tmp" "$@" || die "pip install $* failed"
  rm -rf "$dir" && mv "$dir.tmp" "$dir" && touch "$dir/.complete"
}

store_uncompressed() {  # store_uncompressed JAR : rewrite JAR with every entry stored, not deflated
  "$VENV_PY" - "$1" <<'EOF' || die "could not rewrite $1"
import os, sys, zipfile
jar = sys.argv[1]
with zipfile.ZipFile(jar) as src, zipfile.ZipFile(jar + ".stored", "w", zipfile.ZIP_STORED) as out:
    for entry in src.infolist():
        data = src.read(entry)
        entry.compress_type = zipfile.ZIP_STORED
        out.writestr(entry, data)
os.replace(jar + ".stored", jar)
EOF
}

build_jar() {  # build_jar NAME POM OUT_JAR [stored] : shade POM into OUT_JAR, once per content of POM's folder
  local name="$1" pom="$2" out="$3" stored="${4:-}"
  local stamp; stamp="$(cat "$(dirname "$pom")"/* | sha256sum | cut -c1-16)"
  if [[ -s "$out" && "$(cat "$out.pom-sha" 2>/dev/null)" == "$stamp" ]]; then log "reuse $out"; return; fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  local build="$CACHE/build/$name"
  log "mvn package $pom (the first run downloads the dependencies into ~/.m2, a few minutes)"
  rm -rf "$build"
  # shellcheck disable=SC2086  # CLUSTER_MVN_ARGS: extra Maven flags, e.g. -Dmaven.repo.local=DIR
  mvn -q -B ${CLUSTER_MVN_ARGS:-} -f "$pom" -Djobserver.build.dir="$build" package >"$LOGS/mvn-$name.log" 2>&1 \
    || { tail -40 "$LOGS/mvn-$name.log" >&2; die "maven build of $name failed (log: $LOGS/mvn-$name.log)"; }
  mkdir -p "$JARS"
  local jar; jar="$(find "$build" -maxdepth 1 -name '*.jar' ! -name 'original-*')"
  mv "$jar" "$out"
  [[ "$stored" != stored ]] || store_uncompressed "$out"
  echo "$stamp" >"$out.pom-sha"
  rm -rf "$build"
}

cmd_install() {
  mkdir -p "$DIST" "$JARS" "$LOGS" "$RUN"
  [[ -x "$VENV_PY" ]] || die "no python at $VENV_PY (create the repo's .venv first, or set CLUSTER_PYTHON)"
  find_java
  pip_target "$DIST/flink-$FLINK_VERSION" "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  [[ -x "$FLINK_HOME/bin/jobmanager.sh" && -d "$FLINK_HOME/lib" ]] || die "unexpected Flink layout under $FLINK_HOME"
  chmod +x "$FLINK_HOME"/bin/*.sh "$FLINK_HOME/bin/flink" 2>/dev/null || true
  pip_target "$DIST/spark-$SPARK_VERSION" "pyspark==$SPARK_VERSION"
  [[ -f "$SPARK_HOME_DIR/bin/spark-class" && -d "$SPARK_HOME_DIR/jars" ]] || die "unexpected Spark layout under $SPARK_HOME_DIR"
  chmod +x "$SPARK_HOME_DIR"/bin/* 2>/dev/null || true
  build_jar flink "$REPO/deploy/jobserver/flink/pom.xml" "$FLINK_JOB_SERVER_JAR"
  build_jar spark "$REPO/deploy/jobserver/spark/pom.xml" "$SPARK_JOB_SERVER_JAR"
  # Stored, not deflated: WebHDFS's Jersey finds its resources by reading the whole jar at the
  # first request, which took ~7 s of inflating (under a second stored; 250 MB instead of 93).
  build_jar hdfs "$REPO/deploy/hdfs/pom.xml" "$HDFS_JAR" stored
  log "installed: FLINK_HOME=$FLINK_HOME SPARK_HOME=$SPARK_HOME_DIR"
  log "           $FLINK_JOB_SERVER_JAR"
  log "           $SPARK_JOB_SERVER_JAR"
  log "           $HDFS_JAR"
}

require_installed() {
  [[ -f "$DIST/flink-$FLINK_VERSION/.complete" && -f "$DIST/spark-$SPARK_VERSION/.complete" \
     && -s "$FLINK_JOB_SERVER_JAR" && -s "$SPARK_JOB_SERVER_JAR" ]] \
    || die "not installed: run 'deploy/cluster.sh install' first"
}

# ================================ processes ====================================================
# Each service runs in its own session/process group (setsid), whose leader's pid is recorded in
# run/<name>.pid as "PID STARTTIME" (STARTTIME from /proc guards against pid reuse).
proc_start_time() {  # field 22 of /proc/PID/stat (clock ticks after boot); comm may hold spaces
  local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"; awk '{print $20}' <<<"$stat"
}

pid_alive() {  # pid_alive PIDFILE -> 0 if the recorded process still runs (a zombie does not:
  # where PID 1 reaps no orphans, as in some containers, a killed process stays one)
  local f="$1" pid st
  [[ -f "$f" ]] || return 1
  read -r pid st <"$f" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(proc_start_time "$pid")" == "$st" ]] &&
    [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

group_members() {  # live (non-zombie) pids in process group $1
  ps -e -o pid=,pgid=,stat= 2>/dev/null | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'
}

spawn() {  # spawn NAME LOGFILE CMD... : start CMD detached in a new session, record its pid
  local name="$1" logf="$2"; shift 2
  local pidf="$RUN/$name.pid" tmp="$RUN/.$name.spawn"
  rm -f "$tmp"
  : >>"$logf"
  echo "==== $(date -Is) starting: $*" >>"$logf"
  # The inner bash writes its own pid (the new session leader), then execs the command.
  # shellcheck disable=SC2016  # $$ and $@ expand in the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$tmp" "$@" </dev/null >>"$logf" 2>&1 &
  local i pid=""
  for i in $(seq 1 100); do
    [[ -s "$tmp" ]] && { pid="$(cat "$tmp")"; break; }
    sleep 0.05
  done
  [[ -n "$pid" ]] || die "could not start $name (see $logf)"
  rm -f "$tmp"
  echo "$pid $(proc_start_time "$pid")" >"$pidf"
  log "started $name pid=$pid (log: ${logf#"$REPO"/})"
}

kill_pidfile() {  # kill_pidfile PIDFILE : TERM the process group, wait, KILL leftovers, remove file
  local f="$1" pid st name
  name="$(basename "$f" .pid)"
  [[ -f "$f" ]] || return 0
  read -r pid st <"$f" || true
  if [[ -z "${pid:-}" ]]; then rm -f "$f"; return 0; fi
  local leader_ok=0
  if kill -0 "$pid" 2>/dev/null && [[ "$(proc_start_time "$pid")" == "$st" ]]; then leader_ok=1; fi
  # The group id equals the recorded pid (setsid); members may outlive a dead leader.
  local members; members="$(group_members "$pid")"
  if [[ $leader_ok -eq 0 && -n "$members" ]]; then
    # Leader gone: only touch the group if no member predates our start (pid-reuse guard).
    local m ok=1; for m in $members; do
      [[ "$(proc_start_time "$m")" -ge "${st:-0}" ]] 2>/dev/null || ok=0
    done
    [[ $ok -eq 1 ]] || members=""
  fi
  if [[ $leader_ok -eq 1 || -n "$members" ]]; then
    log "stopping $name (pgid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while [[ -n "$(group_members "$pid")" && $SECONDS -lt $deadline ]]; do sleep 0.3; done
    if [[ -n "$(group_members "$pid")" ]]; then
      log "  $name did not stop in ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while [[ -n "$(group_members "$pid")" && $SECONDS -lt $deadline ]]; do sleep 0.2; done
    fi
    if [[ -n "$(group_members "$pid")" ]]; then
      log "ERROR: $name (pgid $pid) still has processes: $(group_members "$pid" | tr '\n' ' ')"
      return 1
    fi
  fi
  rm -f "$f"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_port() {  # wait_port NAME PORT PIDFILE
  local name="$1" port="$2" pidf="$3" deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$port"; do
    pid_alive "$pidf" || die "$name died while starting (see logs in ${LOGS#"$REPO"/})"
    [[ $SECONDS -lt $deadline ]] || die "$name: port $port not open after ${START_TIMEOUT}s"
    sleep 0.5
  done
}

check_port_free() {
  local port="$1" what="$2"
  if port_open "$port"; then die "port $port ($what) is already in use; stop whatever listens there or set another port"; fi
}

json_get() {  # json_get URL PYTHON_EXPR_ON_d : prints the expression's value, empty on failure
  "$VENV_PY" - "$1" "$2" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        d = json.load(r)
    print(eval(sys.argv[2], {}, {"d": d}))
except Exception:
    pass
EOF
}

start_worker_pool() {  # start_worker_pool NAME PORT
  local name="$1" port="$2"
  check_port_free "$port" "$name"
  # Workers unpickle the pipeline's functions by module name: make the repo importable for them
  # (crawl2clip.* is installed in the venv; tests.* and bench.* come from the repo root).
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PATH="$(dirname "$VENV_PY"):$PATH" \
    spawn "$name" "$LOGS/$name.log" "$VENV_PY" -u "$REPO/deploy/worker_pool.py" \
      --service_port "$port" --bind_host "$HOST"
}

rotate_logs() {  # keep the logs of the previous run of cluster $1 in logs/previous/
  mkdir -p "$LOGS/previous"
  local f; for f in "$LOGS/$1"-*; do [[ -f "$f" ]] && mv -f "$f" "$LOGS/previous/"; done
  return 0
}

services_of() {
  case "$1" in
    flink)
      local tms=() f
      for f in "$RUN"/flink-taskmanager-*.pid; do [[ -e "$f" ]] && tms+=("$(basename "$f" .pid)"); done
      echo "flink-jobserver flink-worker-pool ${tms[*]} flink-jobmanager" ;;
    spark) echo "spark-jobserver spark-worker-pool spark-worker spark-master" ;;
    hdfs) echo "hdfs-minicluster" ;;
  esac
}

cmd_stop() {
  local c="$1" s
  mkdir -p "$RUN"
  local any=0 failed=0
  for s in $(services_of "$c"); do
    [[ -f "$RUN/$s.pid" ]] && any=1
    kill_pidfile "$RUN/$s.pid" || failed=1
  done
  [[ $failed -eq 0 ]] || die "$c: some processes could not be stopped (pid files kept in ${RUN#"$REPO"/})"
  rm -f "$RUN/$c.args" "$RUN/$c.env" "$RUN/$c.info"
  # Scratch space of the stopped services (staged jars, artifacts, shuffle files, blobs).
  case "$c" in
    flink) rm -rf "$RUN/flink-tmp" "$RUN/flink-artifacts" "$RUN/flink-pids" ;;
    spark) rm -rf "$RUN/spark-work" "$RUN/spark-tmp" "$RUN/spark-artifacts" ;;
    hdfs) rm -f "$RUN/hdfs.ready" ;;  # the data under hdfs/ stays for the next start
  esac
  if [[ $any -eq 1 ]]; then log "$c stopped"; else log "$c: nothing running"; fi
}

all_alive() {
  local s any=0
  for s in $(services_of "$1"); do any=1; pid_alive "$RUN/$s.pid" || return 1; done
  [[ $any -eq 1 ]]
}

write_info() {  # write_info CLUSTER KEY=VALUE... : run/CLUSTER.info, read by tests/cluster_fixtures.py
  local c="$1"; shift
  { printf '%s\n' "$@"; echo "args=$("${c}_flags")"; } >"$RUN/$c.info"
}

# ================================ Flink ========================================================
write_flink_conf() {
  local conf="$RUN/flink-conf"
  rm -rf "$conf" && mkdir -p "$conf" "$RUN/flink-tmp"
  cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_HOME"/conf/logback*.xml "$conf/" 2>/dev/null || true
  echo "$HOST" >"$conf/masters"; echo "$HOST" >"$conf/workers"
  cat >"$conf/config.yaml" <<EOF
# Generated by deploy/cluster.sh; edit the script, not this file.
env:
  java:
    opts:
      all: ${JAVA17_OPENS[*]}
jobmanager:
  bind-host: $HOST
  rpc:
    address: $HOST
    port: $FLINK_RPC_PORT
  memory:
    process:
      size: $FLINK_JM_MEMORY
  execution:
    failover-strategy: region
# A job whose TaskManager dies is restarted (finished download shards and scoring parts are
# skipped on the new attempt: each is committed whole, behind its done marker).
restart-strategy:
  type: fixed-delay
  fixed-delay:
    attempts: $FLINK_RESTART_ATTEMPTS
    delay: $FLINK_RESTART_DELAY
taskmanager:
  bind-host: $HOST
  host: $HOST
  numberOfTaskSlots: $FLINK_SLOTS
  memory:
    process:
      size: $FLINK_TM_MEMORY
    # A Beam pipeline has several shuffles (reshuffle, dedup, file writes); at parallelism 2
    # Flink's default network share (10%) runs out of buffers. Smaller segments, larger share.
    segment-size: 16kb
    network:
      fraction: 0.25
      min: 128mb
      max: 512mb
parallelism:
  default: 1
rest:
  address: $HOST
  bind-address: $HOST
  port: $FLINK_REST_PORT
blob:
  server:
    port: "$FLINK_BLOB_PORT"
io:
  tmp:
    dirs: $RUN/flink-tmp
web:
  tmpdir: $RUN/flink-tmp
  submit:
    enable: true
metrics:
  internal:
    query-service:
      port: "0"
EOF
}

flink_flags() {
  if [[ "${1:-}" == "--per-pipeline" ]]; then
    # The Python FlinkRunner starts its own job server JVM (per pipeline run, until the Python
    # process exits) from the jar; it listens on random ports on all interfaces.
    echo "--runner FlinkRunner --flink_master $HOST:$FLINK_REST_PORT --flink_version $FLINK_MINOR --flink_job_server_jar $FLINK_JOB_SERVER_JAR --environment_type EXTERNAL --environment_config $HOST:$FLINK_WORKER_POOL_PORT"
  else
    echo "--runner FlinkRunner --flink_master $HOST:$FLINK_REST_PORT --flink_version $FLINK_MINOR --job_endpoint $HOST:$FLINK_JOB_PORT --environment_type EXTERNAL --environment_config $HOST:$FLINK_WORKER_POOL_PORT"
  fi
}

flink_taskmanager_ids() {  # the ids of the TaskManagers registered with the JobManager, one per line
  json_get "http://$HOST:$FLINK_REST_PORT/taskmanagers" '"\n".join(t["id"] for t in d["taskmanagers"])'
}

flink_ready() {  # prints "TMs/slots" and succeeds when the expected TaskManagers and slots are up
  local got; got="$(json_get "http://$HOST:$FLINK_REST_PORT/overview" '"%s %s" % (d["taskmanagers"], d["slots-total"])')"
  [[ -n "$got" ]] || return 1
  local tms slots; read -r tms slots <<<"$got"
  [[ "$tms" -ge "$1" && "$slots" -ge "$2" ]]
}

cmd_flink_start() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --taskmanagers) FLINK_TASKMANAGERS="$2"; shift 2 ;;
      --slots) FLINK_SLOTS="$2"; shift 2 ;;
      *) die "unknown option for 'flink start': $1" ;;
    esac
  done
  require_installed; find_java; mkdir -p "$RUN" "$LOGS"
  local t0=$SECONDS
  if all_alive flink && [[ -f "$RUN/flink.env" ]] && grep -qx "tm=$FLINK_TASKMANAGERS slots=$FLINK_SLOTS" "$RUN/flink.env"; then
    log "flink already running"
  else
    cmd_stop flink
    check_port_free "$FLINK_REST_PORT" "Flink REST"; check_port_free "$FLINK_RPC_PORT" "Flink RPC"
    check_port_free "$FLINK_BLOB_PORT" "Flink blob server"; check_port_free "$FLINK_JOB_PORT" "Flink job server"
    check_port_free "$FLINK_ARTIFACT_PORT" "Flink artifact service"
    write_flink_conf
    rotate_logs flink
    export FLINK_CONF_DIR="$RUN/flink-conf" FLINK_LOG_DIR="$LOGS" FLINK_PID_DIR="$RUN/flink-pids"
    export FLINK_IDENT_STRING=crawl2clip
    spawn flink-jobmanager "$LOGS/flink-jobmanager.out" "$FLINK_HOME/bin/jobmanager.sh" start-foreground
    local i
    for i in $(seq 1 "$FLINK_TASKMANAGERS"); do
      spawn "flink-taskmanager-$i" "$LOGS/flink-taskmanager-$i.out" "$FLINK_HOME/bin/taskmanager.sh" start-foreground
    done
    start_worker_pool flink-worker-pool "$FLINK_WORKER_POOL_PORT"
    # One long-lived job server for all pipelines (instead of one JVM per pipeline run).
    mkdir -p "$RUN/flink-artifacts"
    spawn flink-jobserver "$LOGS/flink-jobserver.log" "$JAVA" -Xmx"$FLINK_JOB_SERVER_HEAP" "${JAVA17_OPENS[@]}" \
      -Djava.io.tmpdir="$RUN/flink-tmp" -Dorg.slf4j.simpleLogger.showDateTime=true \
      -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -jar "$FLINK_JOB_SERVER_JAR" \
      --flink-master "$HOST:$FLINK_REST_PORT" --job-host "$HOST" --job-port "$FLINK_JOB_PORT" \
      --artifact-port "$FLINK_ARTIFACT_PORT" --expansion-port -1 --artifacts-dir "$RUN/flink-artifacts"
    echo "tm=$FLINK_TASKMANAGERS slots=$FLINK_SLOTS" >"$RUN/flink.env"
  fi
  local want_slots=$((FLINK_TASKMANAGERS * FLINK_SLOTS)) deadline=$((SECONDS + START_TIMEOUT))
  until flink_ready "$FLINK_TASKMANAGERS" "$want_slots"; do
    for s in $(services_of flink); do pid_alive "$RUN/$s.pid" || { cmd_stop flink; die "$s died while starting (see ${LOGS#"$REPO"/}/)"; }; done
    [[ $SECONDS -lt $deadline ]] || { cmd_stop flink; die "Flink not ready after ${START_TIMEOUT}s"; }
    sleep 1
  done
  wait_port flink-worker-pool "$FLINK_WORKER_POOL_PORT" "$RUN/flink-worker-pool.pid"
  wait_port flink-jobserver "$FLINK_JOB_PORT" "$RUN/flink-jobserver.pid"
  flink_flags >"$RUN/flink.args"
  write_info flink rest_url="http://$HOST:$FLINK_REST_PORT" job_endpoint="$HOST:$FLINK_JOB_PORT" \
    worker_pool="$HOST:$FLINK_WORKER_POOL_PORT" taskmanagers="$FLINK_TASKMANAGERS" slots="$FLINK_SLOTS" \
    job_server_jar="$FLINK_JOB_SERVER_JAR" flink_home="$FLINK_HOME"
  log "flink ready in $((SECONDS - t0))s: $FLINK_TASKMANAGERS TaskManager(s) x $FLINK_SLOTS slot(s), web UI http://$HOST:$FLINK_REST_PORT"
  echo "PIPELINE_ARGS=$(flink_flags)"
  echo "PIPELINE_ARGS_PER_PIPELINE_JOB_SERVER=$(flink_flags --per-pipeline)"
}

cmd_flink_revive() {  # starts again each TaskManager whose process died (Kubernetes restarts its pod)
  # and waits until each has registered with the JobManager, so its slots are there on return.
  [[ -f "$RUN/flink.env" ]] || die "flink is not running: 'deploy/cluster.sh flink start' first"
  find_java
  export FLINK_CONF_DIR="$RUN/flink-conf" FLINK_LOG_DIR="$LOGS" FLINK_PID_DIR="$RUN/flink-pids"
  export FLINK_IDENT_STRING=crawl2clip
  local f name revived=() before
  # The JobManager keeps a dead TaskManager listed until its heartbeat times out: the new ones
  # are told apart by their ids, which are fresh for every process.
  before="$(flink_taskmanager_ids)"
  for f in "$RUN"/flink-taskmanager-*.pid; do
    [[ -e "$f" ]] || continue
    pid_alive "$f" && continue
    name="$(basename "$f" .pid)"
    kill_pidfile "$f"  # whatever is left of its process group
    spawn "$name" "$LOGS/$name.out" "$FLINK_HOME/bin/taskmanager.sh" start-foreground
    revived+=("$name")
  done
  local deadline=$((SECONDS + START_TIMEOUT)) id new
  while [[ ${#revived[@]} -gt 0 ]]; do
    new=0
    for id in $(flink_taskmanager_ids); do grep -qxF "$id" <<<"$before" || new=$((new + 1)); done
    [[ $new -ge ${#revived[@]} ]] && break
    for name in "${revived[@]}"; do
      pid_alive "$RUN/$name.pid" || die "$name died while starting again (see ${LOGS#"$REPO"/}/$name.out)"
    done
    [[ $SECONDS -lt $deadline ]] || die "${revived[*]} not registered with the JobManager after ${START_TIMEOUT}s"
    sleep 1
  done
  log "flink: ${#revived[@]} TaskManager(s) started again${revived:+ and registered: ${revived[*]}}"
}

# ================================ Spark ========================================================
spark_flags() {
  # environment_cache_millis: executors keep their SDK worker between the stages of a job
  # instead of starting a new Python worker per stage (halves the runtime of small pipelines).
  echo "--runner PortableRunner --job_endpoint $HOST:$SPARK_JOB_PORT --environment_type EXTERNAL --environment_config $HOST:$SPARK_WORKER_POOL_PORT --environment_cache_millis=$SPARK_ENV_CACHE_MILLIS"
}

spark_alive_workers() {
  json_get "http://$HOST:$SPARK_MASTER_WEBUI_PORT/json" 'sum(1 for w in d["workers"] if w["state"] == "ALIVE")'
}

cmd_spark_start() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --cores) SPARK_WORKER_CORES="$2"; shift 2 ;;
      --memory) SPARK_WORKER_MEMORY="$2"; shift 2 ;;
      *) die "unknown option for 'spark start': $1" ;;
    esac
  done
  require_installed; find_java; mkdir -p "$RUN" "$LOGS"
  local t0=$SECONDS
  if all_alive spark; then
    log "spark already running"
  else
    cmd_stop spark
    local p; for p in "$SPARK_MASTER_PORT" "$SPARK_MASTER_WEBUI_PORT" "$SPARK_WORKER_PORT" \
        "$SPARK_WORKER_WEBUI_PORT" "$SPARK_JOB_PORT" "$SPARK_ARTIFACT_PORT"; do check_port_free "$p" spark; done
    rotate_logs spark
    export SPARK_HOME="$SPARK_HOME_DIR" SPARK_LOCAL_IP="$HOST" SPARK_LOCAL_HOSTNAME="$HOST"
    export SPARK_DAEMON_MEMORY SPARK_LOG_DIR="$LOGS" SPARK_PID_DIR="$RUN" SPARK_CONF_DIR="$RUN/spark-conf"
    mkdir -p "$SPARK_CONF_DIR" "$RUN/spark-work" "$RUN/spark-tmp" "$RUN/spark-artifacts"
    cat >"$SPARK_CONF_DIR/log4j2.properties" <<'EOF'
# Generated by deploy/cluster.sh
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.spark_storage.name = org.apache.spark.storage
logger.spark_storage.level = warn
logger.spark_scheduler.name = org.apache.spark.scheduler
logger.spark_scheduler.level = warn
EOF
    cat >"$SPARK_CONF_DIR/spark-defaults.conf" <<EOF
spark.local.dir $RUN/spark-tmp
spark.ui.showConsoleProgress false
EOF
    spawn spark-master "$LOGS/spark-master.log" "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
      --host "$HOST" --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_WEBUI_PORT"
    wait_port spark-master "$SPARK_MASTER_PORT" "$RUN/spark-master.pid"
    # Each application's executor copies the staged jars (~400 MB) into its work dir: clean them
    # up soon after the application ends (and on stop).
    export SPARK_WORKER_OPTS="-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=60 -Dspark.worker.cleanup.appDataTtl=60 ${SPARK_WORKER_OPTS:-}"
    spawn spark-worker "$LOGS/spark-worker.log" "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --host "$HOST" --port "$SPARK_WORKER_PORT" --webui-port "$SPARK_WORKER_WEBUI_PORT" \
      --cores "$SPARK_WORKER_CORES" --memory "$SPARK_WORKER_MEMORY" --work-dir "$RUN/spark-work" \
      "spark://$HOST:$SPARK_MASTER_PORT"
    start_worker_pool spark-worker-pool "$SPARK_WORKER_POOL_PORT"
    # The job server runs the Spark driver: Spark's jars/* come from the distribution
    # (they are `provided` in Beam's pom), and Java 17 needs Spark's --add-opens list.
    spawn spark-jobserver "$LOGS/spark-jobserver.log" "$JAVA" -Xmx"$SPARK_JOB_SERVER_HEAP" "${JAVA17_OPENS[@]}" \
      -Djava.io.tmpdir="$RUN/spark-tmp" -Dlog4j2.configurationFile="file:$SPARK_CONF_DIR/log4j2.properties" \
      -Dspark.executor.memory="$SPARK_EXECUTOR_MEMORY" -Dspark.driver.host="$HOST" -Dspark.driver.bindAddress="$HOST" \
      -Dspark.ui.port="$SPARK_DRIVER_UI_PORT" -Dspark.local.dir="$RUN/spark-tmp" \
      -Dspark.executor.extraClassPath="$SPARK_JOB_SERVER_JAR" -Dspark.files.useFetchCache=false \
      -Dbeam.spark.test.reuseSparkContext="$SPARK_REUSE_CONTEXT" \
      -cp "$SPARK_JOB_SERVER_JAR:$SPARK_HOME/jars/*" org.apache.beam.runners.spark.SparkJobServerDriver \
      --spark-master-url "spark://$HOST:$SPARK_MASTER_PORT" --job-host "$HOST" --job-port "$SPARK_JOB_PORT" \
      --artifact-port "$SPARK_ARTIFACT_PORT" --expansion-port -1 --artifacts-dir "$RUN/spark-artifacts"
  fi
  local deadline=$((SECONDS + START_TIMEOUT)) s
  until [[ "$(spark_alive_workers)" -ge 1 ]] 2>/dev/null; do
    for s in $(services_of spark); do pid_alive "$RUN/$s.pid" || { cmd_stop spark; die "$s died while starting (see ${LOGS#"$REPO"/}/)"; }; done
    [[ $SECONDS -lt $deadline ]] || { cmd_stop spark; die "no ALIVE Spark worker after ${START_TIMEOUT}s"; }
    sleep 1
  done
  wait_port spark-worker-pool "$SPARK_WORKER_POOL_PORT" "$RUN/spark-worker-pool.pid"
  wait_port spark-jobserver "$SPARK_JOB_PORT" "$RUN/spark-jobserver.pid"
  spark_flags >"$RUN/spark.args"
  write_info spark rest_url="http://$HOST:$SPARK_MASTER_WEBUI_PORT" job_endpoint="$HOST:$SPARK_JOB_PORT" \
    worker_pool="$HOST:$SPARK_WORKER_POOL_PORT" master_url="spark://$HOST:$SPARK_MASTER_PORT" \
    cores="$SPARK_WORKER_CORES" job_server_jar="$SPARK_JOB_SERVER_JAR" spark_home="$SPARK_HOME_DIR"
  log "spark ready in $((SECONDS - t0))s: master spark://$HOST:$SPARK_MASTER_PORT, web UI http://$HOST:$SPARK_MASTER_WEBUI_PORT"
  echo "PIPELINE_ARGS=$(spark_flags)"
}

# ================================ HDFS =========================================================
hdfs_flags() {
  echo "--hdfs_host $HOST --hdfs_port $HDFS_HTTP_PORT --hdfs_user $HDFS_USER"
}

hdfs_root_status() {  # WebHDFS GETFILESTATUS of / : prints DIRECTORY when the filesystem answers
  json_get "http://$HOST:$HDFS_HTTP_PORT/webhdfs/v1/?op=GETFILESTATUS&user.name=$HDFS_USER" 'd["FileStatus"]["type"]'
}

cmd_hdfs_start() {
  [[ $# -eq 0 ]] || die "unknown option for 'hdfs start': $1"
  [[ -s "$HDFS_JAR" ]] || die "not installed: run 'deploy/cluster.sh install' first"
  find_java; mkdir -p "$RUN" "$LOGS" "$HDFS_DATA/tmp"
  local t0=$SECONDS
  if all_alive hdfs; then
    log "hdfs already running"
  else
    cmd_stop hdfs
    local p; for p in "$HDFS_NAMENODE_PORT" "$HDFS_HTTP_PORT" "$HDFS_DATANODE_PORT" \
        "$HDFS_DATANODE_HTTP_PORT" "$HDFS_DATANODE_IPC_PORT"; do check_port_free "$p" hdfs; done
    rotate_logs hdfs
    # NameNode + DataNode in one JVM (deploy/hdfs/LocalHdfs.java); it writes hdfs.ready when up.
    # Tiered level 1 and the serial collector: a quicker start and a smaller footprint.
    spawn hdfs-minicluster "$LOGS/hdfs-minicluster.log" "$JAVA" -Xmx"$HDFS_HEAP" -XX:TieredStopAtLevel=1 \
      -XX:+UseSerialGC "${JAVA17_OPENS[@]}" -Djava.io.tmpdir="$HDFS_DATA/tmp" -Dorg.slf4j.simpleLogger.showDateTime=true \
      -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -jar "$HDFS_JAR" \
      --dir "$HDFS_DATA" --host "$HOST" --namenode-port "$HDFS_NAMENODE_PORT" --http-port "$HDFS_HTTP_PORT" \
      --datanode-port "$HDFS_DATANODE_PORT" --datanode-http-port "$HDFS_DATANODE_HTTP_PORT" \
      --datanode-ipc-port "$HDFS_DATANODE_IPC_PORT" --ready-file "$RUN/hdfs.ready"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until [[ -f "$RUN/hdfs.ready" && "$(hdfs_root_status)" == DIRECTORY ]]; do
    pid_alive "$RUN/hdfs-minicluster.pid" || { cmd_stop hdfs; die "hdfs died while starting (see ${LOGS#"$REPO"/}/hdfs-minicluster.log)"; }
    [[ $SECONDS -lt $deadline ]] || { cmd_stop hdfs; die "HDFS not ready after ${START_TIMEOUT}s"; }
    sleep 0.5
  done
  hdfs_flags >"$RUN/hdfs.args"
  write_info hdfs rest_url="http://$HOST:$HDFS_HTTP_PORT" namenode="hdfs://$HOST:$HDFS_NAMENODE_PORT" \
    user="$HDFS_USER" data_dir="$HDFS_DATA"
  log "hdfs ready in $((SECONDS - t0))s: NameNode hdfs://$HOST:$HDFS_NAMENODE_PORT, WebHDFS and web UI http://$HOST:$HDFS_HTTP_PORT"
  echo "PIPELINE_ARGS=$(hdfs_flags)"
}

# ================================ status =======================================================
cmd_status() {
  local c="$1" s pid st up=0 total=0
  for s in $(services_of "$c"); do
    total=$((total + 1))
    if pid_alive "$RUN/$s.pid"; then
      read -r pid st <"$RUN/$s.pid"; up=$((up + 1))
      printf '  %-22s running  pid %-7s (%s processes in group)\n' "$s" "$pid" "$(group_members "$pid" | wc -l)"
    elif [[ -f "$RUN/$s.pid" ]]; then
      printf '  %-22s DEAD     (stale %s)\n' "$s" "${RUN#"$REPO"/}/$s.pid"
    else
      printf '  %-22s stopped\n' "$s"
    fi
  done
  case "$c" in
    flink)
      local ov; ov="$(json_get "http://$HOST:$FLINK_REST_PORT/overview" '"taskmanagers=%s slots=%s free=%s jobs: running=%s finished=%s failed=%s" % tuple(d[k] for k in ("taskmanagers", "slots-total", "slots-available", "jobs-running", "jobs-finished", "jobs-failed"))')"
      echo "flink: $up/$total services up${ov:+; $ov}"
      [[ $up -gt 0 ]] && echo "  args: $(flink_flags)" ;;
    spark)
      local ov; ov="$(json_get "http://$HOST:$SPARK_MASTER_WEBUI_PORT/json" '"status=%s workers_alive=%s cores=%s apps_active=%s apps_completed=%s" % (d["status"], sum(1 for w in d["workers"] if w["state"] == "ALIVE"), d["cores"], len(d["activeapps"]), len(d["completedapps"]))')"
      echo "spark: $up/$total services up${ov:+; $ov}"
      [[ $up -gt 0 ]] && echo "  args: $(spark_flags)" ;;
    hdfs)
      local root; root="$(hdfs_root_status)"
      echo "hdfs: $up/$total services up${root:+; WebHDFS GETFILESTATUS / -> $root}"
      [[ $up -gt 0 ]] && echo "  args: $(hdfs_flags)" ;;
  esac
  return 0
}

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

main() {
  [[ $# -ge 1 ]] || usage
  case "$1" in
    install) cmd_install ;;
    flink|spark|hdfs)
      local c="$1"; [[ $# -ge 2 ]] || usage
      case "$2" in
        start) shift 2; "cmd_${c}_start" "$@" ;;
        revive) [[ "$c" == flink ]] || usage; cmd_flink_revive ;;
        stop) cmd_stop "$c" ;;
        status) cmd_status "$c" ;;
        args) shift 2; if [[ "$c" == flink ]]; then flink_flags "$@"; else "${c}_flags"; fi ;;
        *) usage ;;
      esac ;;
    all)
      case "${2:-}" in
        stop) cmd_stop flink; cmd_stop spark; cmd_stop hdfs ;;
        status) cmd_status flink; cmd_status spark; cmd_status hdfs ;;
        *) usage ;;
      esac ;;
    -h|--help|help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
