#!/usr/bin/env python3
"""Generates dashboards/halt.json (run from anywhere: python3 deploy/grafana/gen-dashboard.py).

The JSON is the artifact (Grafana imports it, docker-compose provisions it); this script
only keeps its 20-odd panels consistent. Edit here and regenerate, or edit the JSON in
Grafana and export it: test/deploy checks the JSON either way.
"""
import json, os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
DSEL = 'instance=~"$instance", domain=~"$domain"'
RI = "$__rate_interval"

panels = []
y = 0
pid = 0


def nid():
    global pid
    pid += 1
    return pid


def row(title, collapsed=False, description=None):
    global y
    p = {"id": nid(), "type": "row", "title": title, "collapsed": collapsed, "panels": [],
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
    if description:
        p["description"] = description
    panels.append(p)
    y += 1


def panel(kind, title, targets, x, w, h=8, unit="short", description=None, extra=None, newline=True):
    global y
    p = {
        "id": nid(), "type": kind, "title": title, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": l,
                     "range": True, "instant": False} for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "showPoints": "never", "spanNulls": False}
        p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"],
                                   "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                        "orientation": "auto"}
    if description:
        p["description"] = description
    if extra:
        for k, v in extra.items():
            if k == "defaults":
                p["fieldConfig"]["defaults"].update(v)
            else:
                p[k] = v
    panels.append(p)
    if newline:
        y += h


def thresholds(*steps):
    return {"thresholds": {"mode": "absolute",
                           "steps": [{"color": c, "value": v} for v, c in steps]}}


# ---- overview ----
row("Overview")
panel("stat", "Decisions/s", [(f'sum(rate(halt_decisions_total{{{DSEL}}}[{RI}]))', "decisions/s")],
      0, 6, 5, "reqps", "Descriptor decisions per second, every result.", newline=False)
panel("stat", "Over-limit ratio",
      [(f'sum(rate(halt_decisions_total{{{DSEL}, result="over_limit"}}[{RI}])) / sum(rate(halt_decisions_total{{{DSEL}}}[{RI}]))', "over limit")],
      6, 6, 5, "percentunit", "Share of decisions answered OVER_LIMIT (Envoy answers 429).",
      {"defaults": thresholds((None, "green"), (0.05, "yellow"), (0.25, "red"))}, newline=False)
panel("stat", "Fail-open decisions/s",
      [(f'sum(rate(halt_decisions_total{{{DSEL}, result="fail_open"}}[{RI}])) or vector(0)', "fail open")],
      12, 6, 5, "reqps", "Decisions answered OK because the store could not decide (failure_mode: allow). Should be 0.",
      {"defaults": thresholds((None, "green"), (0.000001, "red"))}, newline=False)
panel("stat", "Config: last reload",
      [(f'min(halt_config_last_reload_successful{{{SEL}}})', "last reload")],
      18, 6, 5, "none", "1 on every instance when the last configuration reload succeeded; 0 when some instance keeps an older config.",
      {"defaults": dict(thresholds((None, "red"), (1, "green")),
                        mappings=[{"type": "value", "options": {"0": {"text": "FAILED", "color": "red"},
                                                                 "1": {"text": "OK", "color": "green"}}}])})

# ---- decisions ----
row("Decisions")
panel("timeseries", "Decisions by result",
      [(f'sum by (result) (rate(halt_decisions_total{{{DSEL}}}[{RI}]))', "{{result}}")],
      0, 12, 9, "reqps", "ok, over_limit, shadow (over the limit but answered OK), error, fail_open, exempt.", newline=False)
panel("timeseries", "Decisions by rule",
      [(f'sum by (domain, rule) (rate(halt_decisions_total{{{DSEL}}}[{RI}]))', "{{domain}} / {{rule}}")],
      12, 12, 9, "reqps", "Rule names come from the configuration (rate_limit.name, else the descriptor path).")
panel("timeseries", "Over-limit ratio by rule",
      [(f'sum by (domain, rule) (rate(halt_decisions_total{{{DSEL}, result="over_limit"}}[{RI}])) / sum by (domain, rule) (rate(halt_decisions_total{{{DSEL}}}[{RI}]))',
        "{{domain}} / {{rule}}")],
      0, 12, 9, "percentunit", "Share of each rule's decisions answered OVER_LIMIT.", newline=False)
panel("timeseries", "Shadow-mode hits by rule",
      [(f'sum by (domain, rule) (rate(halt_decisions_total{{{DSEL}, result="shadow"}}[{RI}]))', "{{domain}} / {{rule}}")],
      12, 12, 9, "reqps", "Requests a shadow_mode rule would have refused: what enforcing it would do.")

# ---- latency ----
row("Latency and store")
panel("timeseries", "Request latency (p50, p99)",
      [(f'histogram_quantile(0.5, sum by (le, method) (rate(halt_request_duration_seconds_bucket{{{SEL}}}[{RI}])))', "p50 {{method}}"),
       (f'histogram_quantile(0.99, sum by (le, method) (rate(halt_request_duration_seconds_bucket{{{SEL}}}[{RI}])))', "p99 {{method}}")],
      0, 12, 9, "s", "Server-side latency of a whole call (leaky-bucket shaping delay included). Envoy's filter timeout bounds it from outside.",
      {"defaults": thresholds((None, "green"), (0.01, "red"))}, newline=False)
panel("timeseries", "Calls by method and code",
      [(f'sum by (method, code) (rate(halt_requests_total{{{SEL}}}[{RI}]))', "{{method}} {{code}}")],
      12, 12, 9, "reqps", "gRPC calls by status code.")
panel("timeseries", "Store latency by backend (p50, p99)",
      [(f'histogram_quantile(0.5, sum by (le, backend) (rate(halt_store_duration_seconds_bucket{{{SEL}}}[{RI}])))', "p50 {{backend}}"),
       (f'histogram_quantile(0.99, sum by (le, backend) (rate(halt_store_duration_seconds_bucket{{{SEL}}}[{RI}])))', "p99 {{backend}}")],
      0, 8, 9, "s", "One store round: every descriptor of a call.", newline=False)
panel("timeseries", "Store errors by backend",
      [(f'sum by (backend) (rate(halt_store_errors_total{{{SEL}}}[{RI}]))', "{{backend}}")],
      8, 8, 9, "ops", "Unavailable, timeout, contention, corrupt state. Each one is decided by the rule's failure_mode.", newline=False)
panel("timeseries", "Shaping delay (p50, p99)",
      [(f'histogram_quantile(0.5, sum by (le) (rate(halt_shaping_delay_seconds_bucket{{{SEL}}}[{RI}])))', "p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(halt_shaping_delay_seconds_bucket{{{SEL}}}[{RI}])))', "p99")],
      16, 8, 9, "s", "How long leaky-bucket rules held admitted requests (max_delay bounds it).")

# ---- config and capacity ----
row("Configuration and capacity")
panel("timeseries", "Config reloads",
      [(f'sum by (result) (increase(halt_config_reloads_total{{{SEL}}}[{RI}]))', "{{result}}")],
      0, 8, 8, "short", "Reloads by result (file watch, ConfigMap swap, SIGHUP). A failure keeps the last good config.", newline=False)
panel("timeseries", "Last reload successful",
      [(f'halt_config_last_reload_successful{{{SEL}}}', "{{instance}}")],
      8, 8, 8, "none", "Per instance: 1 = the current files are in force, 0 = an older config is.",
      {"defaults": {"min": 0, "max": 1}}, newline=False)
panel("timeseries", "Rejected calls by reason",
      [(f'sum by (reason) (rate(halt_rejected_total{{{SEL}}}[{RI}]))', "{{reason}}")],
      16, 8, 8, "reqps", "Refused before evaluation: overload (--max-in-flight) or invalid_argument.")
panel("timeseries", "Memory store keys",
      [(f'sum by (instance) (halt_memory_keys{{{SEL}}})', "{{instance}}")],
      0, 8, 8, "short", "Keys held by the in-memory store (0 with other stores).", newline=False)
panel("timeseries", "Memory store evictions",
      [(f'sum by (instance) (rate(halt_memory_evictions_total{{{SEL}}}[{RI}]))', "{{instance}}")],
      8, 8, 8, "ops", "Live keys evicted to stay within the key bound: those clients get fresh budget early.", newline=False)
panel("timeseries", "Process memory and goroutines",
      [(f'process_resident_memory_bytes{{job="halt-envoy", {SEL}}}', "rss {{instance}}"),
       (f'go_goroutines{{job="halt-envoy", {SEL}}}', "goroutines {{instance}}")],
      16, 8, 8, "short", "Resident memory (bytes) and goroutines per instance.",
      {"fieldConfig": {"defaults": {"unit": "short", "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}},
                       "overrides": [{"matcher": {"id": "byRegexp", "options": "rss.*"},
                                      "properties": [{"id": "unit", "value": "bytes"}]}]}})

# ---- SaaS layer ----
row("Plans, quotas and penalties", description="halt's SaaS layer: plans, calendar quotas, penalty lockouts and exemptions. Empty while no rule uses them.")
panel("timeseries", "Plan decisions by plan",
      [(f'sum by (domain, plan, result) (rate(halt_plan_decisions_total{{{DSEL}}}[{RI}]))', "{{domain}} / {{plan}} {{result}}")],
      0, 12, 9, "reqps", "Decisions of plan rules by plan and result.", newline=False)
panel("timeseries", "Quota decisions",
      [(f'sum by (domain, quota, result) (rate(halt_quota_decisions_total{{{DSEL}}}[{RI}]))', "{{domain}} / {{quota}} {{result}}")],
      12, 12, 9, "reqps", "Decisions reported by calendar quotas (mostly their denials), by quota and result.")
panel("stat", "Locked-out refusals/s",
      [(f'sum(rate(halt_penalty_refusals_total{{{DSEL}}}[{RI}])) or vector(0)', "refusals/s")],
      0, 6, 9, "reqps", "Requests refused because their identity is locked out by a penalty policy.",
      {"defaults": thresholds((None, "green"), (0.000001, "orange"))}, newline=False)
panel("timeseries", "Penalty lockouts and violations",
      [(f'sum by (domain, penalty) (increase(halt_penalty_lockouts_total{{{DSEL}}}[{RI}]))', "lockouts {{domain}} / {{penalty}}"),
       (f'sum by (domain, penalty) (increase(halt_penalty_violations_total{{{DSEL}}}[{RI}]))', "violations {{domain}} / {{penalty}}")],
      6, 18, 9, "short", "Violations recorded against penalty policies and the lockouts they started.")
panel("timeseries", "Exemptions by reason",
      [(f'sum by (domain, reason) (rate(halt_exemptions_total{{{DSEL}}}[{RI}]))', "{{domain}} {{reason}}")],
      0, 8, 8, "reqps", "Descriptors let through uncounted: path, private_address, cidr, value.", newline=False)
panel("timeseries", "Plan fallbacks",
      [(f'sum by (domain) (rate(halt_plan_fallbacks_total{{{DSEL}}}[{RI}]))', "{{domain}}")],
      8, 8, 8, "reqps", "Requests that named an unknown plan and got the default plan: a client/config mismatch.", newline=False)
panel("timeseries", "Algorithm overrides by outcome",
      [(f'sum by (outcome) (rate(halt_algorithm_overrides_total{{{SEL}}}[{RI}]))', "{{outcome}}")],
      16, 8, 8, "reqps", "Per-request algorithm asks: applied, ignored (rule does not allow it), invalid.")


def var(name, label, query):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1, "hide": 0,
        "options": [], "regex": "",
    }


dashboard = {
    "uid": "halt-envoy",
    "title": "halt-envoy",
    "description": "halt-envoy rate-limit service: decisions, latency, store, configuration, capacity, quotas and penalties. Source: deploy/grafana/dashboards/halt.json.",
    "tags": ["halt-envoy", "envoy", "rate-limit"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "links": [],
    "annotations": {"list": [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""},
        var("instance", "Instance", 'label_values(halt_config_last_reload_successful{job="halt-envoy"}, instance)'),
        var("domain", "Domain", 'label_values(halt_decisions_total{instance=~"$instance"}, domain)'),
    ]},
    "panels": panels,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "halt.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print("wrote", out, len(panels), "panels")
