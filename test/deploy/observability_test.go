package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// ---- what halt exports ----

var (
	descName   = regexp.MustCompile(`^Desc\{fqName: "([^"]*)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

// exportedMetrics maps every series name halt's registry can produce (histogram and
// summary series included) to its label names, plus what Prometheus adds (up, job,
// instance). It reads pkg/metrics itself, so a renamed metric or label fails the test.
func exportedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	ch := make(chan *prometheus.Desc)
	go func() {
		m := metrics.New(nil)
		m.WatchStoreEvictions("redis", func() uint64 { return 0 }) // registered with a Redis store
		m.Registry.Describe(ch)
		close(ch)
	}()
	out := map[string][]string{"up": nil}
	add := func(name string, labels []string) {
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			ls := labels
			if suffix == "_bucket" {
				ls = append(append([]string(nil), labels...), "le")
			}
			if suffix == "" {
				ls = append(append([]string(nil), labels...), "quantile")
			}
			out[name+suffix] = ls
		}
	}
	for d := range ch {
		s := d.String()
		m := descName.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("cannot read metric name from %s", s)
		}
		var labels []string
		if l := descLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
			for _, x := range strings.Split(l[1], ",") {
				labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(x, "c("), ")"))
			}
		}
		add(m[1], labels)
	}
	return out
}

// ---- PromQL, read with Prometheus's own parser ----

// grafanaVars replaces Grafana's interval macros by durations Prometheus accepts.
func grafanaVars(expr string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h",
		"${__rate_interval}", "1m").Replace(expr)
}

// checkPromQL parses expr with Prometheus's parser and reports every metric halt does
// not export, every label matcher on a label its metric lacks, and every label an
// aggregation groups by or a binary operation matches on that none of the metrics
// under it carries.
func checkPromQL(t *testing.T, where, expr string, exported map[string][]string) {
	t.Helper()
	for _, p := range promQLProblems(expr, exported) {
		t.Errorf("%s: %q: %s", where, expr, p)
	}
}

// promQLProblems is checkPromQL's findings.
func promQLProblems(expr string, exported map[string][]string) []string {
	var out []string
	report := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	// The functions and syntax a default Prometheus server accepts (no experimental ones).
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars(expr))
	if err != nil {
		return []string{err.Error()}
	}
	// Prometheus adds these to every scraped series.
	base := []string{"job", "instance"}
	// labelsUnder is the set of labels the series selected below n may carry.
	labelsUnder := func(n parser.Node) map[string]bool {
		known := map[string]bool{}
		for _, l := range base {
			known[l] = true
		}
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				for _, l := range exported[selectorName(vs)] {
					known[l] = true
				}
			}
			return nil
		})
		return known
	}
	var metrics int
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			metrics++
			name := selectorName(n)
			ls, ok := exported[name]
			if !ok {
				report("uses %s, which halt does not export", name)
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != "__name__" && !contains(base, m.Name) && !contains(ls, m.Name) {
					report("%s has no label %q (it has %v)", name, m.Name, ls)
				}
			}
		case *parser.AggregateExpr:
			known := labelsUnder(n.Expr)
			for _, l := range n.Grouping {
				if !known[l] {
					report("%s groups by %q, a label none of its metrics has", n.Op, l)
				}
			}
		case *parser.BinaryExpr:
			if n.VectorMatching == nil {
				return nil
			}
			known := labelsUnder(n)
			for _, l := range append(append([]string(nil), n.VectorMatching.MatchingLabels...), n.VectorMatching.Include...) {
				if !known[l] {
					report("%s matches on %q, a label none of its metrics has", n.Op, l)
				}
			}
		}
		return nil
	})
	if metrics == 0 {
		report("names no metric")
	}
	return out
}

// selectorName is the metric a vector selector reads (its name or __name__ matcher).
func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == "__name__" {
			return m.Value
		}
	}
	return ""
}

// TestCheckPromQL proves checkPromQL catches what it must: an unknown metric, a label
// its metric lacks, grouping or matching on a missing label, and a syntax error.
func TestCheckPromQL(t *testing.T) {
	exported := map[string][]string{"a_total": {"x"}, "b": {"y"}, "h_bucket": {"x", "le"}}
	for _, c := range []struct {
		expr string
		bad  bool
	}{
		{`sum by (x) (rate(a_total{x="1"}[$__rate_interval]))`, false},
		{`histogram_quantile(0.99, sum by (le, job) (rate(h_bucket[5m]))) / on (job) group_left b`, false},
		{`sum by (y) (rate(a_total[5m]))`, true},            // a_total has no y
		{`rate(a_total{z="1"}[5m])`, true},                  // nor z
		{`c_total`, true},                                   // not exported
		{`a_total / on (y) b`, false},                       // y is b's
		{`a_total / on (z) b`, true},                        // nobody's
		{`sum(rate(a_total[5m])`, true},                     // syntax
		{`rate(a_total[5m] offset 1m) or vector(0)`, false}, // modifiers
		{`rate(a_total[5m]) offset 1m`, true},               // misplaced modifier
		{`irate_typo(a_total[5m])`, true},                   // unknown function
		{`vector(1)`, true},                                 // names no metric
	} {
		got := promQLProblems(c.expr, exported)
		if (len(got) > 0) != c.bad {
			t.Errorf("%q: problems %q, want some: %v", c.expr, got, c.bad)
		}
	}
}

// ---- the dashboard ----

type grafanaTarget struct {
	Expr         string `json:"expr"`
	LegendFormat string `json:"legendFormat"`
}

type grafanaPanel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource map[string]any `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []grafanaTarget `json:"targets"`
	Panels     []grafanaPanel  `json:"panels"`
}

type grafanaDashboard struct {
	UID        string         `json:"uid"`
	Title      string         `json:"title"`
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) (*grafanaDashboard, []grafanaPanel) {
	t.Helper()
	b, err := os.ReadFile(repo("deploy", "grafana", "dashboards", "halt.json"))
	if err != nil {
		t.Fatal(err)
	}
	d := &grafanaDashboard{}
	if err := json.Unmarshal(b, d); err != nil {
		t.Fatalf("halt.json: %v", err)
	}
	var all []grafanaPanel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...) // panels of collapsed rows
	}
	return d, all
}

// variableQueries returns the dashboard's query variables as PromQL (label_values(m, l)
// becomes m) with the label each one reads.
func variableQueries(t *testing.T, d *grafanaDashboard) map[string][2]string {
	out := map[string][2]string{}
	lv := regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		m := lv.FindStringSubmatch(strings.TrimSpace(q))
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q)
			continue
		}
		out[v.Name] = [2]string{m[1], m[2]}
	}
	return out
}

// panelExpr returns the first expression of the panel titled title, with the dashboard
// variables set to "everything".
func panelExpr(t *testing.T, panels []grafanaPanel, title string) string {
	t.Helper()
	for _, p := range panels {
		if p.Title == title && len(p.Targets) > 0 {
			return dashboardVars(p.Targets[0].Expr)
		}
	}
	t.Fatalf("dashboard has no panel %q", title)
	return ""
}

func dashboardVars(expr string) string {
	return strings.NewReplacer(`"$instance"`, `".*"`, `"$domain"`, `".*"`).Replace(grafanaVars(expr))
}

func TestDashboard(t *testing.T) {
	d, panels := loadDashboard(t)
	exported := exportedMetrics(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	ids := map[int]bool{}
	titles := map[string]bool{}
	type rect struct{ x0, y0, x1, y1 int }
	var rects []rect
	var rectTitles []string
	for _, p := range panels {
		if ids[p.ID] {
			t.Errorf("duplicate panel id %d", p.ID)
		}
		ids[p.ID] = true
		titles[p.Title] = true
		r := rect{p.GridPos.X, p.GridPos.Y, p.GridPos.X + p.GridPos.W, p.GridPos.Y + p.GridPos.H}
		if r.x1 > 24 || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		for i, o := range rects {
			if r.x0 < o.x1 && o.x0 < r.x1 && r.y0 < o.y1 && o.y0 < r.y1 {
				t.Errorf("panels %q and %q overlap", p.Title, rectTitles[i])
			}
		}
		rects, rectTitles = append(rects, r), append(rectTitles, p.Title)
		if p.Type == "row" {
			continue
		}
		if uid, _ := p.Datasource["uid"].(string); uid != "${datasource}" {
			t.Errorf("panel %q: datasource uid %q, want ${datasource} (portable across Grafanas)", p.Title, uid)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			checkPromQL(t, fmt.Sprintf("panel %q target %d", p.Title, i), tg.Expr, exported)
		}
	}
	for name, q := range variableQueries(t, d) {
		checkPromQL(t, "variable "+name, q[0], exported)
		// label_values(selector, label): the label must be one the selected metric has.
		e, err := parser.NewParser(parser.Options{}).ParseExpr(q[0])
		if vs, ok := e.(*parser.VectorSelector); err == nil && ok {
			if l := q[1]; l != "job" && l != "instance" && !contains(exported[selectorName(vs)], l) {
				t.Errorf("variable %s: %s has no label %q", name, selectorName(vs), l)
			}
		} else {
			t.Errorf("variable %s: %q is not a metric selector", name, q[0])
		}
	}
	for _, want := range []string{
		"Decisions by result", "Decisions by rule", "Over-limit ratio", "Request latency (p50, p99)",
		"Store latency by backend (p50, p99)", "Store errors by backend", "Config reloads", "Config: last reload",
		"Memory store keys", "Memory store evictions", "Rejected calls by reason",
		"Plan decisions by plan", "Quota decisions", "Locked-out refusals/s", "Penalty lockouts and violations",
	} {
		if !titles[want] {
			t.Errorf("dashboard lacks the panel %q", want)
		}
	}
}

// ---- the alert rules ----

// loadAlerts reads deploy/prometheus/alerts.yaml with Prometheus's own rule-file reader
// (unknown fields refused, every rule validated as Prometheus loads it).
func loadAlerts(t *testing.T) []rulefmt.Rule {
	t.Helper()
	path := repo("deploy", "prometheus", "alerts.yaml")
	groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err) // names the file and line
	}
	if groups == nil {
		t.FailNow()
	}
	var rules []rulefmt.Rule
	for _, g := range groups.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

func TestAlertRules(t *testing.T) {
	rules := loadAlerts(t)
	exported := exportedMetrics(t)
	names := map[string]bool{}
	for _, r := range rules {
		names[r.Alert] = true
		if r.Alert == "" || r.Expr == "" {
			t.Errorf("rule %+v: alert and expr are required", r)
			continue
		}
		checkPromQL(t, "alert "+r.Alert, r.Expr, exported)
		if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
			t.Errorf("alert %s: severity %q", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s: summary and description annotations are required", r.Alert)
		}
	}
	for _, want := range []string{"HaltEnvoyDown", "HaltEnvoyFailingOpen", "HaltEnvoyStoreErrors",
		"HaltEnvoyConfigReloadFailing", "HaltEnvoyConfigReloadFailures", "HaltEnvoyLatencyHigh"} {
		if !names[want] {
			t.Errorf("alerts.yaml lacks %s", want)
		}
	}
	// alerts_test.yaml (promtool's unit tests) has, for every alert, a case where it
	// fires and one where it stays quiet.
	var unit struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(mustRead(t, repo("deploy", "prometheus", "alerts_test.yaml")), &unit); err != nil {
		t.Fatalf("alerts_test.yaml: %v", err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range unit.Tests {
		for _, a := range tc.AlertRuleTest {
			if !names[a.Alertname] {
				t.Errorf("alerts_test.yaml tests %s, which alerts.yaml does not define", a.Alertname)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for name := range names {
		if !fires[name] || !quiet[name] {
			t.Errorf("alerts_test.yaml: %s needs a case where it fires (%v) and one where it stays quiet (%v)", name, fires[name], quiet[name])
		}
	}

	if promtool, err := exec.LookPath("promtool"); err == nil {
		out, err := exec.Command(promtool, "check", "rules", repo("deploy", "prometheus", "alerts.yaml")).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
		out, err = exec.Command(promtool, "test", "rules", repo("deploy", "prometheus", "alerts_test.yaml")).CombinedOutput()
		if err != nil {
			t.Errorf("promtool test rules: %v\n%s", err, out)
		}
		out, err = exec.Command(promtool, "check", "config", repo("deploy", "prometheus", "prometheus.yml")).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not installed: promtool checks skipped (Debian package prometheus)")
	}
}

// ---- end to end: a real Prometheus scrapes a real halt-envoy ----

// demoDescriptors are what examples/envoy/envoy.yaml sends for the compose demo's curl.
func demoDescriptors(t *testing.T) (string, [][]config.Entry) {
	e := edge(t, repo("examples", "envoy", "envoy.yaml"))
	req := request{map[string]string{":path": "/", "x-user-id": "alice"}, "172.18.0.1"}
	return e.rateLimit.GetDomain(), descriptors(t, e.routeRateLimits(), e.rateLimit.GetStage(), req)
}

func rlsClient(t *testing.T, addr string) rlspb.RateLimitServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rlspb.NewRateLimitServiceClient(cc)
}

func rlsRequest(domain string, ds [][]config.Entry) *rlspb.RateLimitRequest {
	req := &rlspb.RateLimitRequest{Domain: domain}
	for _, d := range ds {
		rd := &ratelimitcommonv3.RateLimitDescriptor{}
		for _, e := range d {
			rd.Entries = append(rd.Entries, &ratelimitcommonv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value})
		}
		req.Descriptors = append(req.Descriptors, rd)
	}
	return req
}

type promResponse struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		} `json:"result"`
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"data"`
}

func promGet(t *testing.T, base, path string, q url.Values) promResponse {
	t.Helper()
	u := base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	var r promResponse
	resp, err := httpClient.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return r
}

func TestPrometheusScrapesHalt(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		// Before halt-envoy is built and started: StartPrometheus would say the same.
		testutil.Missing(t, "no prometheus binary on PATH (Debian package prometheus): end-to-end scrape test skipped")
	}
	// halt-envoy with the demo config, in a directory of its own.
	cfgDir := t.TempDir()
	demo, err := os.ReadFile(repo("config", "envoy-demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "envoy-demo.yaml"), demo, 0o644); err != nil {
		t.Fatal(err)
	}
	h := startHalt(t, cfgDir)
	domain, ds := demoDescriptors(t)
	client := rlsClient(t, h.GRPCAddr)

	// Traffic for the whole test: decisions keep changing while Prometheus scrapes.
	ctx, stop := context.WithCancel(context.Background())
	trafficDone := make(chan struct{})
	t.Cleanup(func() { stop(); <-trafficDone })
	go func() {
		defer close(trafficDone)
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			client.ShouldRateLimit(cctx, rlsRequest(domain, ds))
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	// Prometheus scraping it every second, with the repository's alert rules.
	alerts, err := filepath.Abs(repo("deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	base := testutil.StartPrometheus(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: halt-envoy
    static_configs:
      - targets: [%q]
`, alerts, h.HTTPAddr), "")

	// The dashboard's own "Decisions by result" query returns halt's decisions.
	_, panels := loadDashboard(t)
	expr := panelExpr(t, panels, "Decisions by result")
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := promGet(t, base, "/api/v1/query", url.Values{"query": {expr}})
		if r.Status != "success" {
			t.Fatalf("query %q: %s", expr, r.Error)
		}
		if len(r.Data.Result) > 0 {
			var got []string
			for _, s := range r.Data.Result {
				got = append(got, fmt.Sprintf("%s=%v", s.Metric["result"], s.Value[1]))
			}
			sort.Strings(got)
			t.Logf("dashboard query %q answers %v", expr, got)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %q still empty after 60s", expr)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Every dashboard query and variable is PromQL Prometheus accepts.
	d, _ := loadDashboard(t)
	for _, p := range panels {
		for _, tg := range p.Targets {
			if r := promGet(t, base, "/api/v1/query", url.Values{"query": {dashboardVars(tg.Expr)}}); r.Status != "success" {
				t.Errorf("panel %q: Prometheus rejects %q: %s", p.Title, tg.Expr, r.Error)
			}
		}
	}
	for name, q := range variableQueries(t, d) {
		r := promGet(t, base, "/api/v1/query", url.Values{"query": {dashboardVars(q[0])}})
		if r.Status != "success" || len(r.Data.Result) == 0 {
			t.Errorf("variable %s: %q: status %s %s, %d series", name, q[0], r.Status, r.Error, len(r.Data.Result))
		}
		for _, s := range r.Data.Result {
			if s.Metric[q[1]] == "" {
				t.Errorf("variable %s: series %v lacks the label %q", name, s.Metric, q[1])
			}
		}
	}

	// The alert rules loaded and evaluate without errors against real series.
	deadline = time.Now().Add(30 * time.Second)
	for {
		r := promGet(t, base, "/api/v1/rules", nil)
		var pending, n int
		var bad []string
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				n++
				switch rule.Health {
				case "ok":
				case "unknown", "":
					pending++
				default:
					bad = append(bad, rule.Name+": "+rule.LastError)
				}
			}
		}
		if len(bad) > 0 {
			t.Fatalf("alert rules failing to evaluate: %v", bad)
		}
		if n == 0 {
			t.Fatal("Prometheus loaded no alert rules from alerts.yaml")
		}
		if pending == 0 {
			t.Logf("%d alert rules evaluate cleanly", n)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d rules not evaluated after 30s", pending, n)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// And the names the dashboard and alerts rely on are all in halt's real /metrics.
	body := httpGet(t, "http://"+h.HTTPAddr+"/metrics")
	for _, name := range []string{"halt_decisions_total", "halt_request_duration_seconds_bucket",
		"halt_store_duration_seconds_bucket", "halt_config_last_reload_successful", "halt_memory_keys"} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestMetricsDocumented keeps docs/observability.md complete: every halt_ metric
// pkg/metrics registers is described there.
func TestMetricsDocumented(t *testing.T) {
	doc := string(mustRead(t, repo("docs", "observability.md")))
	for name := range exportedMetrics(t) {
		if !strings.HasPrefix(name, "halt_") || strings.HasSuffix(name, "_bucket") ||
			strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count") {
			continue
		}
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("docs/observability.md does not describe %s", name)
		}
	}
}
