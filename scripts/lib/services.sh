#!/usr/bin/env bash
# Shared by scripts/up.sh and .ci/run: make sure what Hyperplane needs is installed and running.
# Installs only from Debian's packages (apt-get) and the npm registry.

hp_log() { printf '\033[1m==>\033[0m %s\n' "$*"; }

hp_apt_install() {
  # apt-get install, running apt-get update once first.
  if [ "$(id -u)" != 0 ]; then echo "need root to install $*" >&2; return 1; fi
  if [ -z "${HP_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; HP_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

hp_ensure_node_modules() {
  if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    hp_log "installing npm dependencies"
    npm install --no-audit --no-fund --loglevel=error
  fi
}

hp_ensure_postgres() {
  local url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hyperplane}"
  local host port db admin_url
  host=$(node -e 'const u=new URL(process.argv[1]);console.log(u.hostname)' "$url")
  port=$(node -e 'const u=new URL(process.argv[1]);console.log(u.port||5432)' "$url")
  db=$(node -e 'const u=new URL(process.argv[1]);console.log(u.pathname.slice(1))' "$url")
  admin_url=$(node -e 'const u=new URL(process.argv[1]);u.pathname="/postgres";console.log(u.toString())' "$url")
  if ! command -v pg_isready >/dev/null || ! pg_isready -q -h "$host" -p "$port"; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      hp_log "installing PostgreSQL (Debian package)"
      hp_apt_install postgresql
      local v; v=$(ls /etc/postgresql | sort -V | tail -1)
      # Local development cluster: trust connections from this host, as the DATABASE_URL default expects.
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "/etc/postgresql/$v/main/pg_hba.conf"
    fi
    hp_log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && break; sleep 0.5; done
    pg_isready -q -h "$host" -p "$port" || { echo "PostgreSQL does not answer at $host:$port" >&2; return 1; }
  fi
  if [ -n "$db" ] && ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    hp_log "creating database $db"
    psql "$admin_url" -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
}

hp_ensure_redis() {
  local url="${REDIS_URL:-redis://127.0.0.1:6379}"
  local host port
  host=$(node -e 'const u=new URL(process.argv[1]);console.log(u.hostname)' "$url")
  port=$(node -e 'const u=new URL(process.argv[1]);console.log(u.port||6379)' "$url")
  if command -v redis-cli >/dev/null && [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = PONG ]; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    hp_log "installing Redis (Debian package)"
    hp_apt_install redis-server
  fi
  hp_log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/hyperplane.log
  for _ in $(seq 1 30); do [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = PONG ] && return 0; sleep 0.2; done
  echo "Redis does not answer at $host:$port" >&2
  return 1
}

hp_ensure_qemu() {
  if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null || ! command -v qemu-storage-daemon >/dev/null; then
    hp_log "installing QEMU (Debian packages)"
    hp_apt_install qemu-system-x86 qemu-utils
  fi
}
