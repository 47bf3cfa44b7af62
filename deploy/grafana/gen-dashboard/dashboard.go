package main

//lint:file-ignore SA1019 the SDK marks its v1 dashboard deprecated in favour of dashboardv2; v1 is the JSON model Grafana's import and file provisioning take (v2 needs Grafana 12's dashboardNewLayouts feature flag), so the committed dashboard stays v1

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// The selectors every query shares: the dashboard's $instance and $domain variables,
// and Grafana's rate interval (four scrapes at least).
const (
	sel  = `instance=~"$instance"`
	dsel = `instance=~"$instance", domain=~"$domain"`
	ri   = "$__rate_interval"
)

// datasource is the ${datasource} variable: the dashboard works on any Grafana whatever
// its Prometheus data source is called.
func datasource() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
}

// query is one PromQL target with its legend.
type query struct{ expr, legend string }

// q formats a query: %[1]s is sel, %[2]s dsel, %[3]s the rate interval.
func q(format, legend string) query {
	return query{fmt.Sprintf(format, sel, dsel, ri), legend}
}

func targets(qs []query) []cog.Builder[variants.Dataquery] {
	var out []cog.Builder[variants.Dataquery]
	for i, x := range qs {
		out = append(out, prometheus.NewDataqueryBuilder().
			RefId(string(rune('A'+i))).
			Datasource(datasource()).
			Expr(x.expr).
			LegendFormat(x.legend).
			Range())
	}
	return out
}

// thresholds are absolute steps; the first has no value (from minus infinity).
func thresholds(colors ...string) func(values ...float64) *dashboard.ThresholdsConfigBuilder {
	return func(values ...float64) *dashboard.ThresholdsConfigBuilder {
		steps := []dashboard.Threshold{{Color: colors[0]}}
		for i, v := range values {
			steps = append(steps, dashboard.Threshold{Value: cog.ToPtr(v), Color: colors[i+1]})
		}
		return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(steps)
	}
}

// ts is a time series panel of w columns and h rows, legend as a table on the right.
func ts(title, description, unit string, w, h uint32, qs ...query) *timeseries.PanelBuilder {
	return timeseries.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Span(w).Height(h).
		Unit(unit).
		DrawStyle(common.GraphDrawStyleLine).
		LineWidth(1).
		FillOpacity(10).
		ShowPoints(common.VisibilityModeNever).
		SpanNulls(common.BoolOrFloat64{Bool: cog.ToPtr(false)}).
		Legend(common.NewVizLegendOptionsBuilder().
			DisplayMode(common.LegendDisplayModeTable).
			Placement(common.LegendPlacementRight).
			Calcs([]string{"mean", "max"}).
			ShowLegend(true)).
		Tooltip(common.NewVizTooltipOptionsBuilder().
			Mode(common.TooltipDisplayModeMulti).
			Sort(common.SortOrderDescending)).
		Targets(targets(qs))
}

// st is a stat panel showing the last value with a sparkline.
func st(title, description, unit string, w, h uint32, qs ...query) *stat.PanelBuilder {
	return stat.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Span(w).Height(h).
		Unit(unit).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false)).
		ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeArea).
		TextMode(common.BigValueTextModeAuto).
		JustifyMode(common.BigValueJustifyModeAuto).
		Orientation(common.VizOrientationAuto).
		Targets(targets(qs))
}

// variable is a multi-value query variable over one label of one metric.
func variable(name, label, query string) *dashboard.QueryVariableBuilder {
	return dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Datasource(datasource()).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
		Definition(query).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc).
		IncludeAll(true).
		Multi(true).
		AllValue(".*").
		Current(dashboard.VariableOption{
			Selected: cog.ToPtr(true),
			Text:     dashboard.StringOrArrayOfString{ArrayOfString: []string{"All"}},
			Value:    dashboard.StringOrArrayOfString{ArrayOfString: []string{"$__all"}},
		})
}

// build is the halt-envoy dashboard.
func build() (dashboard.Dashboard, error) {
	greenRed := thresholds("green", "red")
	greenYellowRed := thresholds("green", "yellow", "red")
	b := dashboard.NewDashboardBuilder("halt-envoy").
		Uid("halt-envoy").
		Description("halt-envoy rate-limit service: decisions, latency, store, configuration, capacity, quotas and penalties. Source: deploy/grafana/gen-dashboard (go generate ./deploy/grafana/...).").
		Tags([]string{"halt-envoy", "envoy", "rate-limit"}).
		Timezone(common.TimeZoneBrowser).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("10s").
		Time("now-1h", "now").
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(variable("instance", "Instance", `label_values(halt_config_last_reload_successful{job="halt-envoy"}, instance)`)).
		WithVariable(variable("domain", "Domain", `label_values(halt_decisions_total{instance=~"$instance"}, domain)`))

	// ---- overview ----
	b.WithRow(dashboard.NewRowBuilder("Overview")).
		WithPanel(st("Decisions/s", "Descriptor decisions per second, every result.", "reqps", 6, 5,
			q(`sum(rate(halt_decisions_total{%[2]s}[%[3]s]))`, "decisions/s"))).
		WithPanel(st("Over-limit ratio", "Share of decisions answered OVER_LIMIT (Envoy answers 429).", "percentunit", 6, 5,
			q(`sum(rate(halt_decisions_total{%[2]s, result="over_limit"}[%[3]s])) / sum(rate(halt_decisions_total{%[2]s}[%[3]s]))`, "over limit")).
			Thresholds(greenYellowRed(0.05, 0.25))).
		WithPanel(st("Fail-open decisions/s", "Decisions answered OK because the store could not decide (failure_mode: allow). Should be 0.", "reqps", 6, 5,
			q(`sum(rate(halt_decisions_total{%[2]s, result="fail_open"}[%[3]s])) or vector(0)`, "fail open")).
			Thresholds(greenRed(0.000001))).
		WithPanel(st("Config: last reload", "1 on every instance when the last configuration reload succeeded; 0 when some instance keeps an older config.", "none", 6, 5,
			q(`min(halt_config_last_reload_successful{%[1]s})`, "last reload")).
			Thresholds(thresholds("red", "green")(1)).
			Mappings([]dashboard.ValueMapping{{ValueMap: &dashboard.ValueMap{
				Type: dashboard.MappingTypeValueToText,
				Options: map[string]dashboard.ValueMappingResult{
					"0": {Text: cog.ToPtr("FAILED"), Color: cog.ToPtr("red")},
					"1": {Text: cog.ToPtr("OK"), Color: cog.ToPtr("green")},
				},
			}}}))

	// ---- decisions ----
	b.WithRow(dashboard.NewRowBuilder("Decisions")).
		WithPanel(ts("Decisions by result", "ok, over_limit, shadow (over the limit but answered OK), error, fail_open, exempt.", "reqps", 12, 9,
			q(`sum by (result) (rate(halt_decisions_total{%[2]s}[%[3]s]))`, "{{result}}"))).
		WithPanel(ts("Decisions by rule", "Rule names come from the configuration (rate_limit.name, else the descriptor path).", "reqps", 12, 9,
			q(`sum by (domain, rule) (rate(halt_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{rule}}"))).
		WithPanel(ts("Over-limit ratio by rule", "Share of each rule's decisions answered OVER_LIMIT.", "percentunit", 12, 9,
			q(`sum by (domain, rule) (rate(halt_decisions_total{%[2]s, result="over_limit"}[%[3]s])) / sum by (domain, rule) (rate(halt_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{rule}}"))).
		WithPanel(ts("Shadow-mode hits by rule", "Requests a shadow_mode rule would have refused: what enforcing it would do.", "reqps", 12, 9,
			q(`sum by (domain, rule) (rate(halt_decisions_total{%[2]s, result="shadow"}[%[3]s]))`, "{{domain}} / {{rule}}")))

	// ---- latency ----
	b.WithRow(dashboard.NewRowBuilder("Latency and store")).
		WithPanel(ts("Request latency (p50, p99)", "Server-side latency of a whole call (leaky-bucket shaping delay included). Envoy's filter timeout bounds it from outside.", "s", 12, 9,
			q(`histogram_quantile(0.5, sum by (le, method) (rate(halt_request_duration_seconds_bucket{%[1]s}[%[3]s])))`, "p50 {{method}}"),
			q(`histogram_quantile(0.99, sum by (le, method) (rate(halt_request_duration_seconds_bucket{%[1]s}[%[3]s])))`, "p99 {{method}}")).
			Thresholds(greenRed(0.01))).
		WithPanel(ts("Calls by method and code", "gRPC calls by status code.", "reqps", 12, 9,
			q(`sum by (method, code) (rate(halt_requests_total{%[1]s}[%[3]s]))`, "{{method}} {{code}}"))).
		WithPanel(ts("Store latency by backend (p50, p99)", "One store round: every descriptor of a call.", "s", 8, 9,
			q(`histogram_quantile(0.5, sum by (le, backend) (rate(halt_store_duration_seconds_bucket{%[1]s}[%[3]s])))`, "p50 {{backend}}"),
			q(`histogram_quantile(0.99, sum by (le, backend) (rate(halt_store_duration_seconds_bucket{%[1]s}[%[3]s])))`, "p99 {{backend}}"))).
		WithPanel(ts("Store errors by backend", "Unavailable, timeout, contention, corrupt state. Each one is decided by the rule's failure_mode.", "ops", 8, 9,
			q(`sum by (backend) (rate(halt_store_errors_total{%[1]s}[%[3]s]))`, "{{backend}}"))).
		WithPanel(ts("Shaping delay (p50, p99)", "How long leaky-bucket rules held admitted requests (max_delay bounds it).", "s", 8, 9,
			q(`histogram_quantile(0.5, sum by (le) (rate(halt_shaping_delay_seconds_bucket{%[1]s}[%[3]s])))`, "p50"),
			q(`histogram_quantile(0.99, sum by (le) (rate(halt_shaping_delay_seconds_bucket{%[1]s}[%[3]s])))`, "p99")))

	// ---- configuration and capacity ----
	b.WithRow(dashboard.NewRowBuilder("Configuration and capacity")).
		WithPanel(ts("Config reloads", "Reloads by result (file watch, ConfigMap swap, SIGHUP). A failure keeps the last good config.", "short", 8, 8,
			q(`sum by (result) (increase(halt_config_reloads_total{%[1]s}[%[3]s]))`, "{{result}}"))).
		WithPanel(ts("Last reload successful", "Per instance: 1 = the current files are in force, 0 = an older config is.", "none", 8, 8,
			q(`halt_config_last_reload_successful{%[1]s}`, "{{instance}}")).
			Min(0).Max(1)).
		WithPanel(ts("Rejected calls by reason", "Refused before evaluation: overload (--max-in-flight) or invalid_argument.", "reqps", 8, 8,
			q(`sum by (reason) (rate(halt_rejected_total{%[1]s}[%[3]s]))`, "{{reason}}"))).
		WithPanel(ts("Memory store keys", "Keys held by the in-memory store (0 with other stores).", "short", 8, 8,
			q(`sum by (instance) (halt_memory_keys{%[1]s})`, "{{instance}}"))).
		WithPanel(ts("Memory store evictions", "Live keys evicted to stay within the key bound: those clients get fresh budget early.", "ops", 8, 8,
			q(`sum by (instance) (rate(halt_memory_evictions_total{%[1]s}[%[3]s]))`, "{{instance}}"))).
		WithPanel(ts("Process memory and goroutines", "Resident memory (bytes) and goroutines per instance.", "short", 8, 8,
			q(`process_resident_memory_bytes{job="halt-envoy", %[1]s}`, "rss {{instance}}"),
			q(`go_goroutines{job="halt-envoy", %[1]s}`, "goroutines {{instance}}")).
			FillOpacity(0).
			OverrideByRegexp("rss.*", []dashboard.DynamicConfigValue{{Id: "unit", Value: "bytes"}}))

	// ---- local-first limits ----
	b.WithRow(dashboard.NewRowBuilder("Local-first limits")).
		WithPanel(ts("Store ops per decision", "Store ops local_first limits cost per decision, by rule: far from the limit a small fraction, near it 1 (decided exactly). docs/consistency.md.", "short", 8, 9,
			q(`sum by (domain, rule) (rate(halt_local_first_store_ops_total{%[2]s}[%[3]s])) / sum by (domain, rule) (rate(halt_local_first_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{rule}}"))).
		WithPanel(ts("Local budget", "The budget (hits) last granted to a key of the rule: it falls to 0 as the key nears its limit.", "short", 8, 9,
			q(`max by (domain, rule) (halt_local_first_budget{%[2]s})`, "{{domain}} / {{rule}}"))).
		WithPanel(ts("Sync lag (p50, p99) and replicas", "How long a locally admitted hit waited before the store counted it; the replicas counted through the store.", "s", 8, 9,
			q(`histogram_quantile(0.5, sum by (le) (rate(halt_local_first_sync_lag_seconds_bucket{%[1]s}[%[3]s])))`, "p50"),
			q(`histogram_quantile(0.99, sum by (le) (rate(halt_local_first_sync_lag_seconds_bucket{%[1]s}[%[3]s])))`, "p99"),
			q(`max(halt_local_first_replicas{%[1]s})`, "replicas")).
			OverrideByName("replicas", []dashboard.DynamicConfigValue{{Id: "unit", Value: "short"}})).
		WithPanel(ts("Overshoot estimate", "Hits admitted locally beyond the limit (an upper bound, from batches the store found over it), by rule.", "short", 8, 8,
			q(`sum by (domain, rule) (increase(halt_local_first_overshoot_hits_total{%[2]s}[%[3]s]))`, "{{domain}} / {{rule}}"))).
		WithPanel(ts("Decisions by where", "local_first decisions made from the local budget and sent to the store.", "reqps", 8, 8,
			q(`sum by (domain, rule, where) (rate(halt_local_first_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{rule}} {{where}}"))).
		WithPanel(ts("Other regions' counts: age", "regions: shared limits: how old each other region's counts are (past --region-stale-after this region is held to its share), and the decisions so held. docs/consistency.md.", "s", 8, 8,
			q(`max by (region) (halt_region_staleness_seconds{%[1]s})`, "{{region}}"),
			q(`sum(rate(halt_region_share_decisions_total{%[1]s}[%[3]s]))`, "held to the share")).
			OverrideByName("held to the share", []dashboard.DynamicConfigValue{{Id: "unit", Value: "reqps"}}))

	// ---- SaaS layer ----
	b.WithRow(dashboard.NewRowBuilder("Plans, quotas and penalties")).
		WithPanel(ts("Plan decisions by plan", "Decisions of plan rules by plan and result.", "reqps", 12, 9,
			q(`sum by (domain, plan, result) (rate(halt_plan_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{plan}} {{result}}"))).
		WithPanel(ts("Quota decisions", "Decisions reported by calendar quotas (mostly their denials), by quota and result.", "reqps", 12, 9,
			q(`sum by (domain, quota, result) (rate(halt_quota_decisions_total{%[2]s}[%[3]s]))`, "{{domain}} / {{quota}} {{result}}"))).
		WithPanel(st("Locked-out refusals/s", "Requests refused because their identity is locked out by a penalty policy.", "reqps", 6, 9,
			q(`sum(rate(halt_penalty_refusals_total{%[2]s}[%[3]s])) or vector(0)`, "refusals/s")).
			Thresholds(thresholds("green", "orange")(0.000001))).
		WithPanel(ts("Penalty lockouts and violations", "Violations recorded against penalty policies and the lockouts they started.", "short", 18, 9,
			q(`sum by (domain, penalty) (increase(halt_penalty_lockouts_total{%[2]s}[%[3]s]))`, "lockouts {{domain}} / {{penalty}}"),
			q(`sum by (domain, penalty) (increase(halt_penalty_violations_total{%[2]s}[%[3]s]))`, "violations {{domain}} / {{penalty}}"))).
		WithPanel(ts("Exemptions by reason", "Descriptors let through uncounted: path, private_address, cidr, value.", "reqps", 8, 8,
			q(`sum by (domain, reason) (rate(halt_exemptions_total{%[2]s}[%[3]s]))`, "{{domain}} {{reason}}"))).
		WithPanel(ts("Plan fallbacks", "Requests that named an unknown plan and got the default plan: a client/config mismatch.", "reqps", 8, 8,
			q(`sum by (domain) (rate(halt_plan_fallbacks_total{%[2]s}[%[3]s]))`, "{{domain}}"))).
		WithPanel(ts("Algorithm overrides by outcome", "Per-request algorithm asks: applied, ignored (rule does not allow it), invalid.", "reqps", 8, 8,
			q(`sum by (outcome) (rate(halt_algorithm_overrides_total{%[1]s}[%[3]s]))`, "{{outcome}}")))

	d, err := b.Build()
	if err != nil {
		return d, err
	}
	// Panel ids in layout order, as Grafana's own export numbers them.
	id := uint32(0)
	for i := range d.Panels {
		id++
		if p := d.Panels[i].Panel; p != nil {
			p.Id = cog.ToPtr(id)
		}
		if r := d.Panels[i].RowPanel; r != nil {
			r.Id = id
		}
	}
	return d, nil
}

// dashboardJSON is the dashboard as committed: indented, with a final newline.
func dashboardJSON() ([]byte, error) {
	d, err := build()
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
