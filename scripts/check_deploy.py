#!/usr/bin/env python3
"""Checks of the deployment files under deploy/ that no external tool makes.

Run by scripts/check_deploy.sh (which also runs promtool and installs kubernetes-validate);
each subcommand prints nothing but its errors on failure and one summary line on success,
and exits non-zero on any error.

  check_deploy.py dashboard-metrics FILE      the metric names the dashboard's queries use,
                                              one per line, sorted (for a test against a
                                              live scrape)
  check_deploy.py dashboard FILE              structure, datasource, variables, metric names
  check_deploy.py dashboard-promql FILE OUT   write the dashboard's queries, variables filled
                                              in, as a rules file for `promtool check rules`
  check_deploy.py alerts RULES TESTS          severity, for, annotations, runbook anchors,
                                              metric names; a firing and a quiet test per alert
  check_deploy.py k8s-schemas DIR VERSION     kubernetes-validate (strict) for every object;
                                              the ServiceMonitor CRD, which it has no schema
                                              for, structurally
  check_deploy.py k8s-refs DIR                cross-references: labels and selectors, ports,
                                              probes, listeners, secrets, the callers file

Run from the repository root (the callers file is checked against proto/ and the environment
variable names against src/config.rs).
"""
import json
import os
import re
import sys

# Every metric family the server exports (README "Metrics"), with its type. A histogram is
# queried through its _bucket, _sum and _count series; counters are named with their _total.
METRICS = {
    "grpc_server_started_total": "counter",
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "privacy_records_grpc_calls_in_flight": "gauge",
    "privacy_records_grpc_calls_shed_total": "counter",
    "privacy_records_requests_open": "gauge",
    "privacy_records_requests_overdue": "gauge",
    "privacy_records_requests_due_within_7_days": "gauge",
    "privacy_records_requests_due_within_2_days_with_open_tasks": "gauge",
    "privacy_records_requests_soonest_due_seconds": "gauge",
    "privacy_records_tasks": "gauge",
    "privacy_records_tasks_oldest_queued_age_seconds": "gauge",
    "privacy_records_tasks_leases_expired": "gauge",
    "privacy_records_retention_due_untasked": "gauge",
    "privacy_records_retention_held": "gauge",
    "privacy_records_retention_sweep_last_run_timestamp_seconds": "gauge",
    "privacy_records_retention_sweep_interval_seconds": "gauge",
    "privacy_records_retention_sweep_duration_seconds": "gauge",
    "privacy_records_retention_sweep_tasked_total": "counter",
    "privacy_records_audit_unsealed_events": "gauge",
    "privacy_records_audit_oldest_unsealed_age_seconds": "gauge",
    "privacy_records_audit_verification_intact": "gauge",
    "privacy_records_audit_verification_timestamp_seconds": "gauge",
    "privacy_records_db_pool_connections": "gauge",
    "privacy_records_database_up": "gauge",
    "privacy_records_replica_lag_seconds": "gauge",
    "privacy_records_replica_max_lag_seconds": "gauge",
    "privacy_records_state_sampled_timestamp_seconds": "gauge",
    "privacy_records_state_sample_errors_total": "counter",
    "privacy_records_consent_decisions_total": "counter",
    "privacy_records_decision_cache_hits_total": "counter",
    "privacy_records_decision_cache_misses_total": "counter",
    "privacy_records_decision_cache_entries": "gauge",
    "privacy_records_decision_cache_applied_age_seconds": "gauge",
}

# Series Prometheus makes itself, which alerts may use (a dashboard checked against a live
# scrape may not).
SYNTHETIC = {"up"}

RUNBOOK_BASE = "https://github.com/privacy-records/privacy-records/blob/main/README.md#runbook-"
SEVERITIES = {"page", "ticket"}
NAMESPACE = "privacy-records"
DATASOURCE_UID = "${datasource}"


def sample_names():
    names = set()
    for name, kind in METRICS.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


class Errors:
    def __init__(self):
        self.items = []

    def __call__(self, message):
        self.items.append(message)

    def finish(self, what, summary):
        if self.items:
            for item in self.items:
                print(f"{what}: {item}", file=sys.stderr)
            return 1
        print(summary)
        return 0


def load_yaml_all(path):
    import yaml

    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# --- PromQL ---------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
TOKEN = re.compile(r"(?P<num>\d[\w.]*)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)")


def promql_metric_names(expr):
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    s = re.sub(r"#[^\n]*", " ", expr)
    # A name given as a matcher ({__name__="x"}) counts; a pattern ({__name__=~"x.*"}) is kept
    # whole so that it fails the check rather than slipping through.
    names = set(re.findall(r'__name__\s*=~?\s*"([^"]*)"', s))
    s = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\b(group_left|group_right)\b", " ", s)
    for m in TOKEN.finditer(s):
        tok = m.group("id")
        if tok is None:
            continue
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if tok.lower() in PROMQL_KEYWORDS:
            continue
        names.add(tok)
    return names


LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<metric>[A-Za-z_:][\w:]*)?\s*(?P<matchers>\{[^}]*\})?\s*,)?\s*(?P<label>\w+)\s*\)\s*$"
)


def variable_query_text(variable):
    q = variable.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    return q or ""


# --- the dashboard --------------------------------------------------------------------------


def walk_panels(panels):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def dashboard_queries(dashboard):
    """(where, PromQL expression) for every panel target and query variable."""
    out = []
    for panel in walk_panels(dashboard.get("panels")):
        for target in panel.get("targets") or []:
            if "expr" in target:
                out.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        text = variable_query_text(variable)
        m = LABEL_VALUES.match(text)
        if m:
            if m.group("metric"):
                out.append((f"variable {variable.get('name')}", m.group("metric") + (m.group("matchers") or "")))
        elif text:
            out.append((f"variable {variable.get('name')}", text))
    return out


def dashboard_metric_names(dashboard):
    names = set()
    for _, expr in dashboard_queries(dashboard):
        names |= promql_metric_names(expr)
    return names


def cmd_dashboard_metrics(path):
    with open(path) as f:
        dashboard = json.load(f)
    for name in sorted(dashboard_metric_names(dashboard)):
        print(name)
    return 0


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__from", "__to", "__all", "__name", "__dashboard", "__org",
                    "__user", "__timeFilter"}


def rects_overlap(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def cmd_dashboard(path):
    err = Errors()
    try:
        with open(path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        err(f"cannot parse {path}: {e}")
        return err.finish("dashboard", "")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            err(f"no {key}")
    schema = dashboard.get("schemaVersion")
    if not isinstance(schema, int) or not 36 <= schema <= 41:
        err(f"schemaVersion {schema!r}: expected about 39")

    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err("no `datasource` variable of type datasource for prometheus")
    for name, v in variables.items():
        if v.get("type") == "query":
            vds = v.get("datasource") or {}
            if vds.get("uid") != DATASOURCE_UID:
                err(f"variable {name}: datasource is not {DATASOURCE_UID}")

    ids = set()
    rects = []
    panels = list(walk_panels(dashboard.get("panels")))
    if not panels:
        err("no panels")
    for panel in panels:
        pid = panel.get("id")
        where = f"panel {pid} {panel.get('title')!r}"
        if pid in ids:
            err(f"{where}: duplicate id")
        ids.add(pid)
        if not panel.get("title"):
            err(f"{where}: no title")
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("x", "y", "w", "h")):
            err(f"{where}: gridPos incomplete")
        else:
            if pos["x"] < 0 or pos["x"] + pos["w"] > 24:
                err(f"{where}: wider than the 24-column grid")
            for other_where, other in rects:
                if rects_overlap(pos, other):
                    err(f"{where}: overlaps {other_where}")
            rects.append((where, pos))
        if panel.get("type") == "row":
            continue
        pds = panel.get("datasource") or {}
        if pds.get("uid") != DATASOURCE_UID:
            err(f"{where}: datasource is not {DATASOURCE_UID}")
        targets = panel.get("targets") or []
        if not targets:
            err(f"{where}: no queries")
        refs = set()
        for t in targets:
            if (t.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                err(f"{where}: query {t.get('refId')} datasource is not {DATASOURCE_UID}")
            if not t.get("refId") or t.get("refId") in refs:
                err(f"{where}: missing or duplicate refId")
            refs.add(t.get("refId"))
            if not (t.get("expr") or "").strip():
                err(f"{where}: query {t.get('refId')} has no expression")

    allowed = sample_names()
    used = set()
    for where, expr in dashboard_queries(dashboard):
        names = promql_metric_names(expr)
        used |= names
        for name in sorted(names - allowed):
            err(f"{where}: {name} is not a metric the server exports")
        for var in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr):
            var = var[0] or var[1]
            if var not in variables and var not in GRAFANA_BUILTINS:
                err(f"{where}: unknown variable ${var}")
    return err.finish("dashboard", f"{len(panels)} panels, {len(used)} metric names, all exported")


VARIABLE_SAMPLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "job": "privacy-records",
                    "instance": ".*", "datasource": "prometheus"}


def cmd_dashboard_promql(path, out):
    import yaml

    try:
        with open(path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"dashboard: cannot parse {path}: {e}", file=sys.stderr)
        return 1
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(dashboard)):
        filled = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)",
                        lambda m: VARIABLE_SAMPLES.get(m.group(1) or m.group(2), "x"), expr)
        rules.append({"record": f"dashboard_query_{i}", "expr": filled,
                      "labels": {"where": where}})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    return 0


# --- the alerts -----------------------------------------------------------------------------


def cmd_alerts(rules_path, tests_path):
    import yaml

    err = Errors()
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    with open(tests_path) as f:
        tests = yaml.safe_load(f)
    allowed = sample_names() | SYNTHETIC
    alerts = {}
    for group in rules.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if not name:
                continue
            if name in alerts:
                err(f"{name}: defined twice")
            alerts[name] = rule
            if "for" not in rule:
                err(f"{name}: no `for:`")
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                err(f"{name}: severity {severity!r} is not one of {sorted(SEVERITIES)}")
            ann = rule.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                if not ann.get(key):
                    err(f"{name}: no {key} annotation")
            want = RUNBOOK_BASE + name.lower()
            if ann.get("runbook_url") and ann["runbook_url"] != want:
                err(f"{name}: runbook_url should be {want}")
            for metric in sorted(promql_metric_names(rule.get("expr", "")) - allowed):
                err(f"{name}: {metric} is not a metric the server exports")
    if not alerts:
        err("no alerts")
    tested = [os.path.abspath(os.path.join(os.path.dirname(tests_path), p)) for p in tests.get("rule_files") or []]
    if os.path.abspath(rules_path) not in tested:
        err(f"{tests_path} does not test {rules_path}")
    firing = set()
    quiet = set()
    for test in tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            name = case.get("alertname")
            if name not in alerts:
                err(f"a test names {name!r}, which is no alert")
            (firing if case.get("exp_alerts") else quiet).add(name)
    for name in sorted(alerts):
        if name not in firing:
            err(f"{name}: no test where it fires")
        if name not in quiet:
            err(f"{name}: no test where it stays quiet")
    return err.finish("alerts", f"{len(alerts)} alerts, each with severity, for, runbook and a firing and a quiet test")


# --- Kubernetes: schemas ----------------------------------------------------------------------


def kustomize_docs(directory, err):
    """(file, document) for every resource the kustomization lists."""
    kpath = os.path.join(directory, "kustomization.yaml")
    try:
        kust = load_yaml_all(kpath)[0]
    except (OSError, IndexError) as e:
        err(f"cannot read {kpath}: {e}")
        return None, []
    if kust.get("namespace") != NAMESPACE:
        err(f"kustomization namespace is {kust.get('namespace')!r}, not {NAMESPACE}")
    listed = kust.get("resources") or []
    present = sorted(f for f in os.listdir(directory)
                     if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    for f in present:
        if f not in listed:
            err(f"{f} is not listed in kustomization.yaml")
    docs = []
    for f in listed:
        path = os.path.join(directory, f)
        if not os.path.exists(path):
            err(f"kustomization.yaml lists {f}, which does not exist")
            continue
        for doc in load_yaml_all(path):
            docs.append((f, doc))
    return kust, docs


SERVICEMONITOR_SPEC_KEYS = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels",
                            "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit",
                            "labelNameLengthLimit", "labelValueLengthLimit", "attachMetadata",
                            "keepDroppedTargets", "scrapeProtocols", "bodySizeLimit",
                            "scrapeClassicHistograms", "scrapeClass", "fallbackScrapeProtocol"}
SERVICEMONITOR_ENDPOINT_KEYS = {"port", "targetPort", "path", "scheme", "params", "interval",
                                "scrapeTimeout", "tlsConfig", "bearerTokenFile", "bearerTokenSecret",
                                "authorization", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
                                "basicAuth", "oauth2", "metricRelabelings", "relabelings", "proxyUrl",
                                "followRedirects", "enableHttp2", "filterRunning"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def check_servicemonitor(where, doc, services, err):
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        err(f"{where}: apiVersion {doc.get('apiVersion')!r}")
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        err(f"{where}: no metadata.name")
    spec = doc.get("spec") or {}
    for key in sorted(set(spec) - SERVICEMONITOR_SPEC_KEYS):
        err(f"{where}: unknown field spec.{key}")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector:
        err(f"{where}: spec.selector.matchLabels is empty")
    ns_sel = spec.get("namespaceSelector") or {}
    namespaces = ns_sel.get("matchNames") or [meta.get("namespace")]
    matched = [s for s in services
               if (s.get("metadata") or {}).get("namespace") in namespaces
               and selector and selector.items() <= ((s.get("metadata") or {}).get("labels") or {}).items()]
    if len(matched) != 1:
        err(f"{where}: selector {selector} matches {len(matched)} Services, not 1")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        err(f"{where}: no endpoints")
    port_names = {p.get("name") for s in matched for p in (s.get("spec") or {}).get("ports") or []}
    for i, ep in enumerate(endpoints):
        for key in sorted(set(ep) - SERVICEMONITOR_ENDPOINT_KEYS):
            err(f"{where}: unknown field endpoints[{i}].{key}")
        if not ep.get("port"):
            err(f"{where}: endpoints[{i}] names no port")
        elif matched and ep["port"] not in port_names:
            err(f"{where}: endpoints[{i}].port {ep['port']!r} is no port of the Service ({sorted(port_names)})")
        if not str(ep.get("path", "/metrics")).startswith("/"):
            err(f"{where}: endpoints[{i}].path must start with /")
        if ep.get("scheme", "http") not in ("http", "https"):
            err(f"{where}: endpoints[{i}].scheme {ep.get('scheme')!r}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                err(f"{where}: endpoints[{i}].{key} {ep[key]!r} is not a duration")


CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): check_servicemonitor}


def cmd_k8s_schemas(directory, version):
    import kubernetes_validate

    err = Errors()
    _, docs = kustomize_docs(directory, err)
    services = [d for _, d in docs if d.get("kind") == "Service"]
    n_schema = n_crd = 0
    for f, doc in docs:
        where = f"{f}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRDS:
            CRDS[key](where, doc, services, err)
            n_crd += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            n_schema += 1
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            err(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            err(f"{where}: {e.message}, and no structural check of it here")
    return err.finish("kubernetes schemas",
                      f"{n_schema} objects valid against Kubernetes {version} (strict), {n_crd} ServiceMonitor checked structurally")


# --- Kubernetes: cross-references ------------------------------------------------------------

SECRET_ENV = {"DATABASE_URL", "PRIVACY_RECORDS_DATABASE_URL", "PRIVACY_RECORDS_READ_DATABASE_URL",
              "PRIVACY_RECORDS_MASTER_KEY", "PRIVACY_RECORDS_IDENTIFIER_HASH_KEY"}


def known_env_names():
    """PRIVACY_RECORDS_* names the server reads (src/config.rs)."""
    with open(os.path.join("src", "config.rs")) as f:
        text = f.read()
    names = set(re.findall(r'parse\(&get,\s*"([A-Z0-9_]+)"\)', text))
    names |= set(re.findall(r'\{ENV_PREFIX\}([A-Z0-9_]+)', text))
    return {"PRIVACY_RECORDS_" + n for n in names} | {"DATABASE_URL"}


def proto_methods():
    """{"privacy.v1.Service": {"Method", ...}} from proto/."""
    services = {}
    for root, _, files in os.walk("proto"):
        for f in files:
            if not f.endswith(".proto"):
                continue
            with open(os.path.join(root, f)) as fh:
                text = re.sub(r"//[^\n]*", "", fh.read())
            pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M)
            current = None
            for m in re.finditer(r"\bservice\s+(\w+)\s*\{|\brpc\s+(\w+)\s*\(", text):
                if m.group(1):
                    current = f"{pkg.group(1)}.{m.group(1)}" if pkg else m.group(1)
                    services.setdefault(current, set())
                elif current:
                    services[current].add(m.group(2))
    return services


def scoped_methods():
    with open(os.path.join("src", "auth", "callers.rs")) as f:
        text = f.read()
    block = re.search(r"SCOPED_METHODS[^=]*=\s*&\[(.*?)\];", text, re.S)
    return set(re.findall(r'"/([^"]+)"', block.group(1))) if block else set()


def check_callers(where, text, err):
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        err(f"{where}: not TOML: {e}")
        return 0
    if set(data) - {"caller"}:
        err(f"{where}: unknown top-level keys {sorted(set(data) - {'caller'})}")
    methods = proto_methods()
    scoped = scoped_methods()
    names = set()
    callers = data.get("caller") or []
    if not callers:
        err(f"{where}: no [[caller]]")
    for c in callers:
        name = c.get("name")
        cw = f"{where}: caller {name!r}"
        if not name or name in names:
            err(f"{cw}: missing or duplicate name")
        names.add(name)
        for key in sorted(set(c) - {"name", "certificate_names", "token_sha256", "allow", "data_systems"}):
            err(f"{cw}: unknown key {key}")
        if not c.get("token_sha256") and not c.get("certificate_names"):
            err(f"{cw}: neither token_sha256 nor certificate_names: it can never authenticate")
        for h in c.get("token_sha256") or []:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                err(f"{cw}: token_sha256 {h!r} is not 64 hex digits")
        allow = c.get("allow") or []
        if not allow:
            err(f"{cw}: allows nothing")
        for entry in allow:
            if entry == "*":
                continue
            service, _, method = entry.partition("/")
            if service not in methods:
                err(f"{cw}: allow {entry!r}: no service {service} in proto/")
            elif method != "*" and method not in methods[service]:
                err(f"{cw}: allow {entry!r}: {service} has no method {method}")
            elif c.get("data_systems") is not None and method != "*" and entry not in scoped:
                err(f"{cw}: allow {entry!r}: a caller limited to data_systems may not call it")
    return len(callers)


def port_of(addr):
    m = re.fullmatch(r"(?:\[[^\]]*\]|[^:]*):(\d+)", addr or "")
    return int(m.group(1)) if m else None


def resolve_port(port, container_ports):
    """A port number or name, as the container declares it, or None."""
    for p in container_ports:
        if port == p.get("containerPort") or port == p.get("name"):
            return p.get("containerPort")
    return None


def subset(selector, labels):
    return bool(selector) and selector.items() <= (labels or {}).items()


def cmd_k8s_refs(directory):
    err = Errors()
    kust, docs = kustomize_docs(directory, err)
    by_kind = {}
    for f, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append((f, doc))
        meta = doc.get("metadata") or {}
        where = f"{f}: {doc.get('kind')}/{meta.get('name')}"
        if doc.get("kind") == "Namespace":
            if meta.get("name") != NAMESPACE:
                err(f"{where}: a namespace other than {NAMESPACE}")
        elif meta.get("namespace") != NAMESPACE:
            err(f"{where}: namespace {meta.get('namespace')!r}, not {NAMESPACE}")
        if doc.get("kind") == "Secret":
            err(f"{where}: secrets do not belong in these files; reference them by name")

    def one(kind):
        found = by_kind.get(kind) or []
        if len(found) != 1:
            err(f"expected one {kind}, found {len(found)}")
            return None, {}
        return found[0]

    _, deploy = one("Deployment")
    _, service = one("Service")
    _, pdb = one("PodDisruptionBudget")
    _, netpol = one("NetworkPolicy")
    _, monitor = one("ServiceMonitor")
    if not deploy:
        return err.finish("kubernetes references", "")
    dspec = deploy.get("spec") or {}
    template = dspec.get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    pod = template.get("spec") or {}

    # Labels and selectors.
    if not subset((dspec.get("selector") or {}).get("matchLabels"), pod_labels):
        err("Deployment selector does not match its pod template's labels")
    if service and not subset((service.get("spec") or {}).get("selector"), pod_labels):
        err("Service selector does not match the Deployment's pod labels")
    if pdb:
        if not subset(((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels"), pod_labels):
            err("PodDisruptionBudget selector does not match the Deployment's pod labels")
        min_available = (pdb.get("spec") or {}).get("minAvailable")
        if isinstance(min_available, int) and min_available >= (dspec.get("replicas") or 1):
            err(f"PodDisruptionBudget minAvailable {min_available} leaves no pod to evict of {dspec.get('replicas')} replicas")
    if netpol and not subset(((netpol.get("spec") or {}).get("podSelector") or {}).get("matchLabels"), pod_labels):
        err("NetworkPolicy podSelector does not match the Deployment's pod labels")
    for tsc in pod.get("topologySpreadConstraints") or []:
        if not subset((tsc.get("labelSelector") or {}).get("matchLabels"), pod_labels):
            err("a topologySpreadConstraint's labelSelector does not match the pod labels")

    containers = pod.get("containers") or []
    if len(containers) != 1:
        err(f"expected one container, found {len(containers)}")
        return err.finish("kubernetes references", "")
    c = containers[0]
    ports = c.get("ports") or []
    port_names = [p.get("name") for p in ports]
    if len(set(port_names)) != len(port_names):
        err("container port names are not unique")
    env = {e.get("name"): e for e in c.get("env") or []}
    env_value = {k: v.get("value") for k, v in env.items()}
    args = [str(a) for a in c.get("args") or []]

    # Environment: known names; secrets by reference only.
    known = known_env_names()
    for name, e in env.items():
        if (name.startswith("PRIVACY_RECORDS_") or name == "DATABASE_URL") and name not in known:
            err(f"env {name}: the server reads no such variable (src/config.rs)")
        if name in SECRET_ENV:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in e or not ref:
                err(f"env {name}: a secret must come from a secretKeyRef, never a literal value")
    if "DATABASE_URL" not in env and "PRIVACY_RECORDS_DATABASE_URL" not in env:
        err("no DATABASE_URL: the server would start an embedded database in the pod")
    if pod.get("enableServiceLinks", True):
        err("enableServiceLinks must be false: a Service named privacy-records injects PRIVACY_RECORDS_* variables")

    # Listeners and ports.
    def flag(name):
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None

    if not args or args[0] != "serve":
        err(f"container args {args} do not start with serve")
    listen = flag("--listen") or env_value.get("PRIVACY_RECORDS_LISTEN")
    metrics = flag("--metrics-listen") or env_value.get("PRIVACY_RECORDS_METRICS_LISTEN")
    health = env_value.get("PRIVACY_RECORDS_HEALTH_LISTEN")
    listeners = {"grpc": listen, "metrics": metrics, "probes": health}
    for port_name, addr in listeners.items():
        port = port_of(addr)
        if port is None:
            err(f"the {port_name} listener has no address with a port (got {addr!r})")
        elif not addr.startswith("0.0.0.0:") and not addr.startswith("[::]:"):
            err(f"the {port_name} listener {addr} is not reachable from outside the pod")
        declared = [p for p in ports if p.get("name") == port_name]
        if not declared or declared[0].get("containerPort") != port:
            err(f"container port {port_name!r} is not the {port_name} listener's port {port}")

    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(probe_name)
        if not probe:
            if probe_name != "startupProbe":
                err(f"no {probe_name}")
            continue
        grpc = probe.get("grpc")
        if not grpc:
            err(f"{probe_name} is not a grpc probe")
            continue
        resolved = resolve_port(grpc.get("port"), ports)
        if resolved is None:
            err(f"{probe_name} port {grpc.get('port')} is not a declared container port")
        elif resolved != port_of(health):
            err(f"{probe_name} port {resolved} is not the health listener's ({health}); the gRPC port speaks TLS")

    # Service and ServiceMonitor ports.
    service_ports = {}
    for sp in (service.get("spec") or {}).get("ports") or []:
        service_ports[sp.get("name")] = sp
        if resolve_port(sp.get("targetPort", sp.get("port")), ports) is None:
            err(f"Service port {sp.get('name')}: targetPort {sp.get('targetPort')} is not a container port")
    for name in ("grpc", "metrics"):
        sp = service_ports.get(name)
        if not sp or resolve_port(sp.get("targetPort", sp.get("port")), ports) != port_of(listeners[name]):
            err(f"the Service has no port {name!r} reaching the {name} listener")
    for ep in (monitor.get("spec") or {}).get("endpoints") or []:
        sp = service_ports.get(ep.get("port"))
        if not sp or resolve_port(sp.get("targetPort", sp.get("port")), ports) != port_of(metrics):
            err(f"ServiceMonitor endpoint port {ep.get('port')!r} does not reach the metrics listener")

    # NetworkPolicy ports.
    allowed_in = set()
    for rule in (netpol.get("spec") or {}).get("ingress") or []:
        for p in rule.get("ports") or []:
            resolved = resolve_port(p.get("port"), ports)
            if resolved is None:
                err(f"NetworkPolicy ingress port {p.get('port')} is not a container port")
            allowed_in.add(resolved)
    for name in ("grpc", "metrics"):
        if port_of(listeners[name]) not in allowed_in:
            err(f"NetworkPolicy lets nothing in to the {name} port")
    egress_ports = {p.get("port") for rule in (netpol.get("spec") or {}).get("egress") or []
                    for p in rule.get("ports") or []}
    for needed, what in ((53, "DNS"), (5432, "PostgreSQL")):
        if needed not in egress_ports:
            err(f"NetworkPolicy lets nothing out to {what} (port {needed})")

    # Security context.
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        err("runAsNonRoot is not set")
    if csc.get("readOnlyRootFilesystem") is not True:
        err("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        err("allowPrivilegeEscalation is not false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        err("capabilities do not drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        err(f"seccompProfile is {seccomp!r}, not RuntimeDefault")

    # Volumes, files, the callers file.
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = {m.get("mountPath").rstrip("/"): m for m in c.get("volumeMounts") or []}
    for m in mounts.values():
        if m.get("name") not in volumes:
            err(f"volumeMount {m.get('mountPath')} uses no declared volume ({m.get('name')})")
    tmp = mounts.get("/tmp")
    if not tmp or "emptyDir" not in volumes.get(tmp.get("name"), {}):
        err("no emptyDir at /tmp under a read-only root filesystem")
    for v in volumes.values():
        secret = v.get("secret")
        if secret and not secret.get("secretName"):
            err(f"volume {v.get('name')}: a secret volume without secretName")
    configmaps = {d.get("metadata", {}).get("name"): d for _, d in by_kind.get("ConfigMap") or []}
    n_callers = 0
    for var in ("PRIVACY_RECORDS_TLS_CERT_FILE", "PRIVACY_RECORDS_TLS_KEY_FILE",
                "PRIVACY_RECORDS_TLS_CLIENT_CA_FILE", "PRIVACY_RECORDS_CALLERS_FILE"):
        path = env_value.get(var)
        if not path:
            err(f"{var} is not set")
            continue
        directory_, base = os.path.split(path)
        mount = mounts.get(directory_)
        if not mount:
            err(f"{var} {path}: nothing is mounted at {directory_}")
            continue
        volume = volumes.get(mount.get("name")) or {}
        if var == "PRIVACY_RECORDS_CALLERS_FILE":
            cm_name = (volume.get("configMap") or {}).get("name")
            cm = configmaps.get(cm_name)
            if not cm:
                err(f"{var} {path}: the volume is not one of these ConfigMaps ({cm_name!r})")
            elif base not in (cm.get("data") or {}):
                err(f"{var} {path}: ConfigMap {cm_name} has no key {base}")
            else:
                n_callers = check_callers(f"ConfigMap {cm_name} {base}", cm["data"][base], err)
        elif "secret" not in volume:
            err(f"{var} {path}: not mounted from a Secret")

    # Shutdown: NOT_SERVING, the delay, then the grace period, all within the pod's termination grace.
    delay_ms = int(env_value.get("PRIVACY_RECORDS_SHUTDOWN_DELAY_MS") or 0)
    grace_ms = int(flag("--shutdown-grace-ms") or env_value.get("PRIVACY_RECORDS_SHUTDOWN_GRACE_MS") or 20000)
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if (delay_ms + grace_ms) / 1000 >= termination:
        err(f"terminationGracePeriodSeconds {termination} leaves no time beyond shutdown delay + grace ({delay_ms + grace_ms} ms)")

    return err.finish("kubernetes references",
                      f"selectors, ports, probes, listeners, secrets and {n_callers} callers consistent")


COMMANDS = {
    "dashboard-metrics": (cmd_dashboard_metrics, 1),
    "dashboard": (cmd_dashboard, 1),
    "dashboard-promql": (cmd_dashboard_promql, 2),
    "alerts": (cmd_alerts, 2),
    "k8s-schemas": (cmd_k8s_schemas, 2),
    "k8s-refs": (cmd_k8s_refs, 1),
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS or len(argv) - 2 != COMMANDS[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = COMMANDS[argv[1]]
    return fn(*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
