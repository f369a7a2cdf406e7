#!/usr/bin/env bash
# Deploys Blaze one of six ways; run `docker/deploy.sh --help`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
compose_file="$here/docker-compose.yml"

usage() {
  cat <<'EOF'
Usage: docker/deploy.sh [MODE] [ACTION]

Modes (default: default):
  default       blaze, PostgreSQL, Redis, Prometheus, Grafana (docker compose)
  development   the same with the source mounted; rebuilt and restarted on
                every change (debug build)
  gpu           the same with the CUDA image (needs the NVIDIA container
                toolkit)
  full          nginx (8088, TLS 8443) in front of two replicas, plus the
                default services
  minimal       one container, the smallest image, the embedded store only
  native        the full topology without Docker, from this host's binaries:
                two Blaze replicas, nginx, PostgreSQL, Redis, and
                Prometheus when installed

Actions:
  up            build, start, wait until ready, print the URLs (default)
  stop          stop what `up` started (compose: down, volumes kept)
  status        show what runs

Docker modes make docker/.env and docker/blaze.env from their .example
files on first use, with the secrets generated. The native mode keeps its
state (logs, pids, data, generated secrets) in $BLAZE_NATIVE_DIR
(default ~/.local/state/blaze-native) and reads:
  BLAZE_BIN             the blaze binary (default: target/release/blaze,
                        built with cargo when missing)
  BLAZE_NATIVE_PORTS    the replicas' ports (default "18081 18082")
  NGINX_PORT, NGINX_TLS_PORT, PROMETHEUS_PORT   (8088, 8443, 9090)
  BLAZE_DATABASE_URL    (postgresql://postgres@127.0.0.1:5432/blaze; the
                        database is created when missing)
  BLAZE_REDIS_URL       (redis://127.0.0.1:6379)
  BLAZE_READY_TIMEOUT_S how long to wait for readiness (default 600: the
                        first start pulls the models)
Any BLAZE__SECTION__KEY in the environment reaches the replicas.
EOF
}

say() { printf 'deploy: %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

# poll SECONDS COMMAND...: runs COMMAND until it succeeds (0), or SECONDS
# pass (1).
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# Waits until URL answers 200, at most SECONDS.
wait_ready() { poll "$2" curl -fsS -o /dev/null --max-time 2 "$1"; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND; gives up on the deploy.
wait_for() {
  local name=$1 seconds=$2
  shift 2
  poll "$seconds" "$@" || die "$name did not come up within ${seconds}s"
}

random_hex() { openssl rand -hex "$1"; }

# ---------------------------------------------------------------------------
# Docker modes.

ensure_env_files() {
  if [ ! -f "$here/.env" ]; then
    sed -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$(random_hex 24)/" \
      -e "s/^GRAFANA_ADMIN_PASSWORD=.*/GRAFANA_ADMIN_PASSWORD=$(random_hex 12)/" \
      -e "s/^ELASTIC_PASSWORD=.*/ELASTIC_PASSWORD=$(random_hex 24)/" \
      -e "s/^KIBANA_PASSWORD=.*/KIBANA_PASSWORD=$(random_hex 24)/" \
      "$here/.env.example" > "$here/.env"
    chmod 600 "$here/.env"
    say "wrote docker/.env (generated passwords)"
  fi
  if [ ! -f "$here/blaze.env" ]; then
    sed -e "s/^BLAZE__SECURITY__PEPPER=.*/BLAZE__SECURITY__PEPPER=$(random_hex 32)/" \
      -e "s/^BLAZE__AUTH__BOOTSTRAP_KEY=.*/BLAZE__AUTH__BOOTSTRAP_KEY=blz_$(random_hex 8)_$(random_hex 32)/" \
      "$here/blaze.env.example" > "$here/blaze.env"
    chmod 600 "$here/blaze.env"
    say "wrote docker/blaze.env (generated pepper and first admin key)"
  fi
  # Prometheus reads /metrics with the scrape token (the production
  # profile serves it to no one else): one value in blaze.env for Blaze, and
  # the same in prometheus/scrape_token for Prometheus (mounted read-only;
  # readable by the container's nobody user).
  local token
  token=$(env_value BLAZE__SECURITY__SCRAPE_TOKEN "$here/blaze.env")
  if [ -z "$token" ]; then
    token=$(random_hex 32)
    if grep -q '^BLAZE__SECURITY__SCRAPE_TOKEN=' "$here/blaze.env"; then
      sed -i -e "s/^BLAZE__SECURITY__SCRAPE_TOKEN=.*/BLAZE__SECURITY__SCRAPE_TOKEN=$token/" "$here/blaze.env"
    else
      echo "BLAZE__SECURITY__SCRAPE_TOKEN=$token" >> "$here/blaze.env"
    fi
    say "generated the scrape token (docker/blaze.env, docker/prometheus/scrape_token)"
  fi
  (umask 022 && printf '%s\n' "$token" > "$here/prometheus/scrape_token")
  # The full profile's log shipper logs in to Elasticsearch as blaze_logs
  # with this password (elasticsearch-setup sets it; the replicas, uid
  # 10001, read it from the mounted folder).
  if [ ! -s "$here/elasticsearch/credentials/blaze_password" ]; then
    (umask 022 && random_hex 24 > "$here/elasticsearch/credentials/blaze_password")
  fi
}

env_value() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

require_docker() {
  command -v docker >/dev/null || die "docker is not installed; use: docker/deploy.sh native"
  docker info >/dev/null 2>&1 || die "no Docker engine answers; use: docker/deploy.sh native"
  docker compose version >/dev/null 2>&1 || die "the docker compose plugin is missing"
}

compose() { docker compose -f "$compose_file" --project-directory "$here" --project-name blaze "$@"; }

docker_up() {
  local profile=$1 port
  require_docker
  ensure_env_files
  if [ "$profile" = full ] && [ ! -f "$here/nginx/tls/blaze.crt" ]; then
    "$here/nginx/make-cert.sh" localhost
  fi
  export BLAZE_GIT_SHA
  BLAZE_GIT_SHA="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  # The development container compiles Blaze on its first start.
  local timeout=900
  [ "$profile" = development ] && timeout=2400
  compose --profile "$profile" up --detach --build --wait --wait-timeout "${BLAZE_READY_TIMEOUT_S:-$timeout}"
  if [ "$profile" = full ]; then
    port="$(env_value NGINX_PORT "$here/.env")"
    port=${port:-8088}
  else
    port="$(env_value BLAZE_PORT "$here/.env")"
    port=${port:-8080}
  fi
  wait_ready "http://127.0.0.1:$port/health/ready" 60 || die "Blaze is not ready on port $port"
  say "ready"
  echo "  API:        http://127.0.0.1:$port/v1 (key: BLAZE__AUTH__BOOTSTRAP_KEY in docker/blaze.env)"
  if [ "$profile" = full ]; then
    echo "  TLS:        https://127.0.0.1:$(env_value NGINX_TLS_PORT "$here/.env") (self-signed)"
  fi
  echo "  Prometheus: http://127.0.0.1:$(env_value PROMETHEUS_PORT "$here/.env")"
  echo "  Grafana:    http://127.0.0.1:$(env_value GRAFANA_PORT "$here/.env") (admin; password: GRAFANA_ADMIN_PASSWORD in docker/.env)"
  if [ "$profile" = full ]; then
    echo "  Jaeger:     http://127.0.0.1:$(env_value JAEGER_UI_PORT "$here/.env") (traces)"
    echo "  Kibana:     http://127.0.0.1:$(env_value KIBANA_PORT "$here/.env") (logs; elastic / ELASTIC_PASSWORD in docker/.env)"
  fi
}

minimal_up() {
  require_docker
  local port=${BLAZE_PORT:-8080}
  docker build -f "$here/Dockerfile" --target minimal -t blaze:minimal \
    --build-arg "BLAZE_GIT_SHA=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" "$root"
  docker rm -f blaze-minimal >/dev/null 2>&1 || true
  docker run --detach --name blaze-minimal --restart unless-stopped \
    --publish "$port:8080" --volume blaze-minimal-data:/var/lib/blaze \
    --memory 2g --cpus 2 blaze:minimal >/dev/null
  wait_ready "http://127.0.0.1:$port/health/ready" "${BLAZE_READY_TIMEOUT_S:-600}" \
    || die "Blaze is not ready on port $port; see: docker logs blaze-minimal"
  say "ready"
  echo "  API: http://127.0.0.1:$port/v1 (the first admin's key: docker logs blaze-minimal | grep -A2 'first admin')"
}

# ---------------------------------------------------------------------------
# Native mode: the full topology as host processes.

state=${BLAZE_NATIVE_DIR:-$HOME/.local/state/blaze-native}
read -r -a replica_ports <<< "${BLAZE_NATIVE_PORTS:-18081 18082}"
nginx_port=${NGINX_PORT:-8088}
nginx_tls_port=${NGINX_TLS_PORT:-8443}
prometheus_port=${PROMETHEUS_PORT:-9090}
database_url=${BLAZE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/blaze}
redis_url=${BLAZE_REDIS_URL:-redis://127.0.0.1:6379}

# Whether PID runs: a zombie does not (where nothing reaps orphans, as in
# some containers, a killed process stays one and kill -0 still succeeds).
running() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }
pid_alive() { [ -f "$1" ] && running "$(cat "$1")"; }

blaze_binary() {
  if [ -n "${BLAZE_BIN:-}" ]; then
    [ -x "$BLAZE_BIN" ] || die "BLAZE_BIN=$BLAZE_BIN is not an executable"
    echo "$BLAZE_BIN"
    return
  fi
  local built="${CARGO_TARGET_DIR:-$root/target}/release/blaze"
  if [ ! -x "$built" ]; then
    say "building Blaze (cargo build --release; the first build takes a while)" >&2
    (cd "$root" && cargo build --release --locked --bin blaze >&2)
  fi
  echo "$built"
}

# host:port of a URL like scheme://user@host:port/path.
url_host_port() { local rest=${1#*://}; rest=${rest#*@}; echo "${rest%%/*}"; }

# The newest Debian PostgreSQL cluster version installed (for pg_ctlcluster).
postgres_version() { find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1; }

start_postgres() {
  local host_port host port database
  host_port=$(url_host_port "$database_url")
  host=${host_port%:*} port=${host_port##*:}
  if ! pg_isready -h "$host" -p "$port" -q 2>/dev/null; then
    command -v pg_ctlcluster >/dev/null || die "PostgreSQL does not answer on $host_port and pg_ctlcluster is missing"
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(postgres_version)" main start
    touch "$state/started-postgres"
    wait_for "PostgreSQL" 30 pg_isready -h "$host" -p "$port" -q
  fi
  database=${database_url##*/}
  database=${database%%\?*}
  if ! psql "${database_url%/*}/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
    psql "${database_url%/*}/postgres" -qc "CREATE DATABASE \"$database\"" >/dev/null
    say "created database $database"
  fi
}

start_redis() {
  local host_port host port
  host_port=$(url_host_port "$redis_url")
  host=${host_port%:*} port=${host_port##*:}
  if ! redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || die "Redis does not answer on $host_port and redis-server is missing"
    say "starting Redis"
    redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
      --pidfile "$state/redis.pid" --logfile "$state/redis.log"
    touch "$state/started-redis"
    wait_for "Redis" 10 redis-cli -h "$host" -p "$port" ping
  fi
}

secret() {
  local file="$state/$1"
  if [ ! -s "$file" ]; then
    (umask 077 && "$2" > "$file")
  fi
  cat "$file"
}
new_pepper() { random_hex 32; }
new_scrape_token() { random_hex 32; }
new_admin_key() { echo "blz_$(random_hex 8)_$(random_hex 32)"; }

# start_replica INDEX PORT BINARY PEPPER ADMIN_KEY SCRAPE_TOKEN
start_replica() {
  local index=$1 port=$2 binary=$3 pepper=$4 admin_key=$5 scrape_token=$6
  local pid_file="$state/blaze-$index.pid"
  if pid_alive "$pid_file"; then
    say "replica $index already runs (pid $(cat "$pid_file"))"
    return
  fi
  mkdir -p "$state/blaze-$index"
  BLAZE_PROFILE=${BLAZE_PROFILE:-production} \
    BLAZE__SERVER__HOST=127.0.0.1 \
    BLAZE__SERVER__PORT="$port" \
    BLAZE__STORAGE__DATA_DIR="$state/blaze-$index" \
    BLAZE__STORAGE__DATABASE_URL="$database_url" \
    BLAZE__STORAGE__REDIS_URL="$redis_url" \
    BLAZE__SECURITY__PEPPER="$pepper" \
    BLAZE__AUTH__BOOTSTRAP_KEY="$admin_key" \
    BLAZE__SECURITY__SCRAPE_TOKEN="$scrape_token" \
    BLAZE__RATE_LIMITS__REPLICAS="${#replica_ports[@]}" \
    setsid "$binary" serve >> "$state/blaze-$index.log" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  say "replica $index: pid $!, port $port, log $state/blaze-$index.log"
}

# $state/nginx mirrors docker/: nginx.conf, and nginx/ with the locations,
# an upstream of loopback replicas and a self-signed certificate.
write_nginx_config() {
  local directory="$state/nginx" port
  mkdir -p "$directory/nginx"
  cp "$here/nginx/blaze-locations.conf" "$directory/nginx/"
  sed -e "s#^pid .*#pid $directory/nginx.pid;#" \
    -e "s#listen 8088;#listen $nginx_port;#" \
    -e "s#listen 8443 ssl;#listen $nginx_tls_port ssl;#" \
    "$here/nginx.conf" > "$directory/nginx.conf"
  {
    echo "# Written by deploy.sh native: the replicas on loopback."
    echo "upstream blaze {"
    for port in "${replica_ports[@]}"; do
      echo "    server 127.0.0.1:$port max_fails=3 fail_timeout=10s;"
    done
    echo "    keepalive 64;"
    echo "}"
  } > "$directory/nginx/blaze-upstream.conf"
  if [ ! -f "$directory/nginx/tls/blaze.crt" ]; then
    "$here/nginx/make-cert.sh" localhost "$directory/nginx/tls" >/dev/null
  fi
}

start_nginx() {
  command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
  write_nginx_config
  if pid_alive "$state/nginx/nginx.pid"; then
    nginx -p "$state/nginx" -c "$state/nginx/nginx.conf" -s reload
    return
  fi
  nginx -p "$state/nginx" -c "$state/nginx/nginx.conf" >> "$state/nginx.log" 2>&1
  say "nginx: http://127.0.0.1:$nginx_port, https://127.0.0.1:$nginx_tls_port"
}

start_prometheus() {
  if ! command -v prometheus >/dev/null; then
    say "prometheus is not installed; skipped"
    return
  fi
  local directory="$state/prometheus" port
  mkdir -p "$directory/data"
  cp "$here/prometheus/alerts.yml" "$directory/"
  {
    echo "# Written by deploy.sh native: the replicas on loopback."
    echo "global: {scrape_interval: 15s, evaluation_interval: 15s}"
    echo "rule_files: [alerts.yml]"
    echo "scrape_configs:"
    echo "  - job_name: blaze"
    echo "    authorization: {type: Bearer, credentials_file: $state/scrape-token}"
    echo "    static_configs:"
    echo "      - labels: {service: blaze}"
    echo "        targets:"
    for port in "${replica_ports[@]}"; do
      echo "          - 127.0.0.1:$port"
    done
  } > "$directory/prometheus.yml"
  if pid_alive "$state/prometheus.pid"; then
    kill -HUP "$(cat "$state/prometheus.pid")"
    return
  fi
  setsid prometheus --config.file="$directory/prometheus.yml" --storage.tsdb.path="$directory/data" \
    --web.listen-address="127.0.0.1:$prometheus_port" >> "$state/prometheus.log" 2>&1 < /dev/null &
  echo $! > "$state/prometheus.pid"
  say "prometheus: http://127.0.0.1:$prometheus_port"
}

native_up() {
  mkdir -p "$state"
  chmod 700 "$state"
  local binary index pepper admin_key scrape_token
  binary=$(blaze_binary)
  # Made here, once: a command substitution on the line that starts a
  # replica in the background would run in that background job, and two
  # replicas would race to make two different secrets.
  pepper=${BLAZE__SECURITY__PEPPER:-$(secret pepper new_pepper)}
  admin_key=${BLAZE__AUTH__BOOTSTRAP_KEY:-$(secret admin-key new_admin_key)}
  # Prometheus reads it from the file; the replicas from the environment.
  scrape_token=$(secret scrape-token new_scrape_token)
  start_postgres
  start_redis
  for index in "${!replica_ports[@]}"; do
    start_replica "$((index + 1))" "${replica_ports[$index]}" "$binary" "$pepper" "$admin_key" "$scrape_token"
  done
  start_nginx
  start_prometheus
  local timeout=${BLAZE_READY_TIMEOUT_S:-600}
  for index in "${!replica_ports[@]}"; do
    wait_ready "http://127.0.0.1:${replica_ports[$index]}/health/ready" "$timeout" \
      || die "replica $((index + 1)) is not ready; see $state/blaze-$((index + 1)).log"
  done
  wait_ready "http://127.0.0.1:$nginx_port/health/ready" 30 || die "nginx does not reach the replicas; see $state/nginx.log"
  say "ready"
  echo "  API:   http://127.0.0.1:$nginx_port/v1 (https on $nginx_tls_port, self-signed)"
  if [ -z "${BLAZE__AUTH__BOOTSTRAP_KEY:-}" ]; then
    echo "  key:   $admin_key (the first admin; kept in $state/admin-key)"
  fi
  echo "  state: $state (logs, pids, data)"
}

# stop_pid FILE SECONDS: TERM, then KILL after SECONDS.
stop_pid() {
  local file=$1 seconds=$2 pid deadline
  pid_alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + seconds))
  while running "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$file"
}

native_stop() {
  [ -d "$state" ] || { say "nothing started ($state does not exist)"; return; }
  local file
  if pid_alive "$state/nginx/nginx.pid"; then
    nginx -p "$state/nginx" -c "$state/nginx/nginx.conf" -s quit 2>/dev/null || true
  fi
  for file in "$state"/blaze-*.pid; do
    [ -e "$file" ] || continue
    # The production profile drains 5 s and lets requests finish for 60 s.
    stop_pid "$file" 70 &
  done
  wait
  stop_pid "$state/prometheus.pid" 10
  if [ -f "$state/started-redis" ]; then
    stop_pid "$state/redis.pid" 10
    rm -f "$state/started-redis"
  fi
  if [ -f "$state/started-postgres" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(postgres_version)" main stop || true
    rm -f "$state/started-postgres"
  fi
  say "stopped (data and secrets kept in $state)"
}

native_status() {
  local file name
  for file in "$state"/blaze-*.pid "$state/nginx/nginx.pid" "$state/prometheus.pid" "$state/redis.pid"; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .pid)
    if pid_alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
  done
}

# ---------------------------------------------------------------------------

mode=default
action=up
for argument in "$@"; do
  case $argument in
    -h | --help) usage; exit 0 ;;
    default | development | gpu | full | minimal | native) mode=$argument ;;
    up | stop | status) action=$argument ;;
    *) usage >&2; die "unknown argument: $argument" ;;
  esac
done

case "$mode:$action" in
  native:up) native_up ;;
  native:stop) native_stop ;;
  native:status) native_status ;;
  minimal:up) minimal_up ;;
  minimal:stop) require_docker; docker rm -f blaze-minimal >/dev/null && say "stopped (volume blaze-minimal-data kept)" ;;
  minimal:status) require_docker; docker ps --filter name=blaze-minimal ;;
  *:up) docker_up "$mode" ;;
  *:stop) require_docker; compose --profile "$mode" down ;;
  *:status) require_docker; compose --profile "$mode" ps ;;
esac
