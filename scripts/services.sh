# Sourced by the scripts: make sure the local PostgreSQL (and Redis, when
# asked) are running, starting or installing them when they are not. Each
# step says what it does; a server that was already running is never
# reconfigured unless PGWS_ALLOW_PG_TRUST=1 asks for it.

# Tell how to point the scripts at a PostgreSQL that asks for a password.
pgws_postgres_password_hint() {
  echo "PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password. Either:" >&2
  echo "  * give a connection string: PGWS_DB_URI='postgres://user:password@127.0.0.1:5432/db' $0" >&2
  echo "    (scripts/test.sh: PGWS_TEST_DB_URI; a password can also come from ~/.pgpass or PGPASSWORD)," >&2
  echo "  * or let the script add 'host all postgres 127.0.0.1/32 trust' to pg_hba.conf and reload:" >&2
  echo "    PGWS_ALLOW_PG_TRUST=1 $0" >&2
}

pgws_ensure_postgres() {
  local installed=0
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; then
    pgws_postgres_trust "$installed"
    return
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    installed=1
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "PostgreSQL is not installed: installing it with apt-get" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      echo "PostgreSQL is not installed and cannot be installed here (need root and apt-get)" >&2
      return 1
    fi
  fi
  echo "starting PostgreSQL" >&2
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  # Tests connect as postgres without a password over TCP.
  for _ in $(seq 1 60); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 0.5
  done
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
    return 1
  fi
  pgws_postgres_trust "$installed"
}

# The scripts connect as postgres without a password over TCP. A server this
# script installed is configured for that (and says so); one that was there
# already only with PGWS_ALLOW_PG_TRUST=1, else the hint above and failure.
pgws_postgres_trust() {
  local installed=$1
  psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1 && return 0
  if [ "$installed" != 1 ] && [ "${PGWS_ALLOW_PG_TRUST:-0}" != 1 ]; then
    pgws_postgres_password_hint
    return 1
  fi
  echo "adding 'host all postgres 127.0.0.1/32 trust' to the top of pg_hba.conf and reloading PostgreSQL" >&2
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  done
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  done
}

pgws_ensure_redis() {
  if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      echo "Redis is not installed" >&2
      return 1
    fi
  fi
  echo "starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/pgws.log
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "Redis did not start on 127.0.0.1:6379" >&2
  return 1
}

pgws_ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "cargo is not installed: install a Rust toolchain (https://rustup.rs) first" >&2
      return 1
    fi
  fi
}
