#!/usr/bin/env bash
# Checks the deployment files under deploy/: the Prometheus configuration and alerting rules
# (promtool check config, check rules, test rules), the rules' conventions, the Grafana
# dashboard (structure, metric names, and its PromQL through promtool), and the Kubernetes
# manifests (kubernetes-validate against a fixed Kubernetes version, strict; the ServiceMonitor
# checked structurally; cross-references between the objects and with the server's settings).
#
# Usage: scripts/check_deploy.sh            (from anywhere; works on the repository root)
#   TOOLS_DIR   where missing tools are installed (default /tmp/privacy-records-ci-tools):
#               promtool from Debian's prometheus package (unpacked, not installed, so no
#               daemon starts), kubernetes-validate in a Python venv
#   K8S_VERSION Kubernetes version to validate against (default 1.30.0)
#
# Prints one line per check; a failing check shows its output. Exits non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS_DIR=${TOOLS_DIR:-/tmp/privacy-records-ci-tools}
K8S_VERSION=${K8S_VERSION:-1.30.0}
KUBERNETES_VALIDATE_VERSION=1.37.0

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

FAILED=0
PASSED=0

# check NAME COMMAND...: runs the command quietly; one line on success, its output on failure.
check() {
    local name=$1 status=0 first
    shift
    "$@" >"$WORK/out" 2>&1 || status=$?
    if [[ $status == 0 ]]; then
        # The summary our own checks print, or nothing for the tools' chatter.
        first=$(grep -v '^\s*$' "$WORK/out" | tail -n 1 || true)
        if [[ "$1" == "$PY" ]]; then
            printf 'ok    %-28s %s\n' "$name" "$first"
        else
            printf 'ok    %s\n' "$name"
        fi
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL  %s (exit status %s)\n' "$name" "$status"
        sed 's/^/      /' "$WORK/out"
        FAILED=$((FAILED + 1))
    fi
}

fail_setup() {
    echo "FAIL  setup: $*" >&2
    exit 1
}

# promtool: on PATH, or unpacked from Debian's prometheus package into TOOLS_DIR.
find_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        return
    fi
    local unpacked="$TOOLS_DIR/prometheus/usr/bin/promtool"
    if [[ ! -x "$unpacked" ]]; then
        command -v apt-get >/dev/null 2>&1 || fail_setup "no promtool and no apt-get to fetch it"
        mkdir -p "$WORK/deb"
        if ! (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null 2>&1); then
            apt-get update -qq >/dev/null 2>&1 || true
            (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null 2>&1) ||
                fail_setup "cannot download Debian's prometheus package for promtool"
        fi
        mkdir -p "$TOOLS_DIR/prometheus"
        dpkg-deb -x "$WORK"/deb/prometheus_*.deb "$TOOLS_DIR/prometheus" ||
            fail_setup "cannot unpack the prometheus package"
    fi
    echo "$unpacked"
}

# A venv with kubernetes-validate (and PyYAML, which it brings).
find_python() {
    local venv="$TOOLS_DIR/venv"
    if ! "$venv/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('kubernetes-validate') != '$KUBERNETES_VALIDATE_VERSION')" >/dev/null 2>&1; then
        python3 -m venv "$venv" >/dev/null 2>&1 || fail_setup "python3 -m venv failed"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$WORK/pip.log" 2>&1 ||
            { cat "$WORK/pip.log" >&2; fail_setup "pip install kubernetes-validate failed"; }
    fi
    echo "$venv/bin/python"
}

PROMTOOL=$(find_promtool)
PY=$(find_python)

PROM=deploy/prometheus
check "promtool check config" "$PROMTOOL" check config "$PROM/prometheus.yml"
check "promtool check rules" "$PROMTOOL" check rules "$PROM/alerts.yml"
check "promtool test rules" "$PROMTOOL" test rules "$PROM/alerts_test.yml"
check "alert conventions" "$PY" scripts/check_deploy.py alerts "$PROM/alerts.yml" "$PROM/alerts_test.yml"

DASHBOARD=deploy/grafana/privacy-records.json
check "dashboard" "$PY" scripts/check_deploy.py dashboard "$DASHBOARD"
dashboard_promql() {
    "$PY" scripts/check_deploy.py dashboard-promql "$DASHBOARD" "$WORK/dashboard_rules.yml" &&
        "$PROMTOOL" check rules "$WORK/dashboard_rules.yml"
}
check "dashboard PromQL parses" dashboard_promql

check "kubernetes schemas" "$PY" scripts/check_deploy.py k8s-schemas deploy/kubernetes "$K8S_VERSION"
check "kubernetes references" "$PY" scripts/check_deploy.py k8s-refs deploy/kubernetes

echo "check_deploy: $PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
