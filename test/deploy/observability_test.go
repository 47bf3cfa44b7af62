package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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

// ---- a small PromQL reader: enough to find metric names and label names ----

type promRefs struct {
	metrics []string
	labels  map[string][]string // metric -> labels in its matchers ("" for grouping labels)
}

var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true, "inf": true, "nan": true,
}

var promAggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// grafanaVars replaces Grafana's interval macros by durations Prometheus accepts.
func grafanaVars(expr string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h",
		"${__rate_interval}", "1m").Replace(expr)
}

func parsePromQL(expr string) (promRefs, error) {
	r := promRefs{labels: map[string][]string{}}
	s := grafanaVars(expr)
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		return i
	}
	skipString := func(i int) (int, error) {
		q := s[i]
		for j := i + 1; j < len(s); j++ {
			if s[j] == '\\' && q != '`' {
				j++
				continue
			}
			if s[j] == q {
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d", i)
	}
	// matchers reads {a="x", b=~"y"} starting at '{' and returns the label names.
	matchers := func(i int) ([]string, int, error) {
		var ls []string
		i++
		for {
			i = skipSpace(i)
			if i >= len(s) {
				return nil, 0, fmt.Errorf("unterminated {")
			}
			if s[i] == '}' {
				return ls, i + 1, nil
			}
			if s[i] == ',' {
				i++
				continue
			}
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			if j == i {
				return nil, 0, fmt.Errorf("label name expected at %d: %q", i, s[i:])
			}
			ls = append(ls, s[i:j])
			i = skipSpace(j)
			for i < len(s) && strings.ContainsRune("=!~", rune(s[i])) {
				i++
			}
			i = skipSpace(i)
			if i >= len(s) || !strings.ContainsRune("\"'`", rune(s[i])) {
				return nil, 0, fmt.Errorf("label value expected at %d", i)
			}
			var err error
			if i, err = skipString(i); err != nil {
				return nil, 0, err
			}
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case strings.ContainsRune(" \t\r\n", rune(c)):
			i++
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(i)
			if err != nil {
				return r, err
			}
			i = j
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return r, fmt.Errorf("unterminated [")
			}
			i += j + 1
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case c == '{':
			ls, j, err := matchers(i)
			if err != nil {
				return r, err
			}
			r.labels[""] = append(r.labels[""], ls...)
			if !contains(ls, "__name__") {
				return r, fmt.Errorf("selector without a metric name at %d", i)
			}
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := skipSpace(j)
			switch {
			case promKeywords[strings.ToLower(word)]:
				if k < len(s) && s[k] == '(' { // by (a, b), on (c) ...
					end := strings.IndexByte(s[k:], ')')
					if end < 0 {
						return r, fmt.Errorf("unterminated (")
					}
					for _, l := range strings.Split(s[k+1:k+end], ",") {
						if l = strings.TrimSpace(l); l != "" {
							r.labels[""] = append(r.labels[""], l)
						}
					}
					j = k + end + 1
				}
			case k < len(s) && s[k] == '(', promAggregations[word]:
				// a function, or an aggregation (whose by/without may come first)
			default:
				r.metrics = append(r.metrics, word)
				if k < len(s) && s[k] == '{' {
					ls, e, err := matchers(k)
					if err != nil {
						return r, err
					}
					r.labels[word] = append(r.labels[word], ls...)
					j = e
				}
			}
			i = j
		default:
			i++
		}
	}
	return r, nil
}

// checkPromQL reports every metric or label in expr that halt does not export.
func checkPromQL(t *testing.T, where, expr string, exported map[string][]string) {
	t.Helper()
	refs, err := parsePromQL(expr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, expr, err)
		return
	}
	if len(refs.metrics) == 0 {
		t.Errorf("%s: %q names no metric", where, expr)
	}
	known := map[string]bool{"job": true, "instance": true, "le": true, "quantile": true}
	for _, m := range refs.metrics {
		ls, ok := exported[m]
		if !ok {
			t.Errorf("%s: %q uses %s, which halt does not export", where, expr, m)
			continue
		}
		for _, l := range ls {
			known[l] = true
		}
		for _, l := range refs.labels[m] {
			if l != "job" && l != "instance" && !contains(ls, l) {
				t.Errorf("%s: %q: %s has no label %q (it has %v)", where, expr, m, l, ls)
			}
		}
	}
	for _, l := range refs.labels[""] {
		if !known[l] {
			t.Errorf("%s: %q groups or matches on %q, a label none of its metrics has", where, expr, l)
		}
	}
}

func TestPromQLParser(t *testing.T) {
	r, err := parsePromQL(`sum without (x) (c) + histogram_quantile(0.99, sum by (le, job) (rate(a_b_bucket{x="y}", z=~'q'}[$__rate_interval]))) / on (job) group_left b > 1e-3 or vector(0)`)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r.metrics) != "[c a_b_bucket b]" || fmt.Sprint(r.labels["a_b_bucket"]) != "[x z]" || fmt.Sprint(r.labels[""]) != "[x le job job]" {
		t.Fatalf("got %v %v", r.metrics, r.labels)
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

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadAlerts(t *testing.T) []alertRule {
	t.Helper()
	doc := yamlDoc(t, repo("deploy", "prometheus", "alerts.yaml"))
	b, _ := json.Marshal(doc)
	var f struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

func TestAlertRules(t *testing.T) {
	// The yaml tags above are for readers; the JSON round trip uses the field names.
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
	if promtool, err := exec.LookPath("promtool"); err == nil {
		out, err := exec.Command(promtool, "check", "rules", repo("deploy", "prometheus", "alerts.yaml")).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
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
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
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
	dir := t.TempDir()
	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: halt-envoy
    static_configs:
      - targets: [%q]
`, alerts, h.HTTPAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(promCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	promLog := &testutil.SyncBuffer{}
	cmd := exec.Command(promBin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = promLog, promLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", promLog.String())
		}
	})
	base := "http://" + promAddr
	waitHTTP(t, base+"/-/ready", exited, 30*time.Second)

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
