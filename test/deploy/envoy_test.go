package deploy_test

import (
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// Every extension named by a typed_config in the examples must be registered, or
	// protojson cannot resolve its Any. (The typed imports above register theirs.)
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
)

// loadBootstrap reads an Envoy YAML bootstrap the way Envoy does (YAML -> JSON -> proto,
// unknown fields rejected), then runs the proto validation rules on it and on every
// typed_config inside it.
func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, b); err != nil {
		t.Fatalf("%s: not a valid Envoy v3 bootstrap: %v", path, err)
	}
	validateDeep(t, path, b)
	return b
}

// envoyEdge is what the tests need out of an example bootstrap.
type envoyEdge struct {
	listenerPort uint32
	hcm          *hcmv3.HttpConnectionManager
	filters      []string // http filter names, in order
	rateLimit    *ratelimitv3.RateLimit
	extAuthz     *extauthzv3.ExtAuthz // nil when absent
	vhost        *routev3.VirtualHost
	clusters     map[string]*clusterv3.Cluster
}

func edge(t *testing.T, path string) *envoyEdge {
	t.Helper()
	b := loadBootstrap(t, path)
	e := &envoyEdge{clusters: map[string]*clusterv3.Cluster{}}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 {
		t.Fatalf("%s: want one listener, got %d", path, len(ls))
	}
	e.listenerPort = ls[0].GetAddress().GetSocketAddress().GetPortValue()
	for _, fc := range ls[0].GetFilterChains() {
		for _, f := range fc.GetFilters() {
			h := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig().MessageIs(h) {
				if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
					t.Fatal(err)
				}
				e.hcm = h
			}
		}
	}
	if e.hcm == nil {
		t.Fatalf("%s: no http_connection_manager", path)
	}
	for _, hf := range e.hcm.GetHttpFilters() {
		e.filters = append(e.filters, hf.GetName())
		tc := hf.GetTypedConfig()
		switch hf.GetName() {
		case "envoy.filters.http.ratelimit":
			e.rateLimit = &ratelimitv3.RateLimit{}
			if err := tc.UnmarshalTo(e.rateLimit); err != nil {
				t.Fatalf("%s: %s: %v", path, hf.GetName(), err)
			}
		case "envoy.filters.http.ext_authz":
			e.extAuthz = &extauthzv3.ExtAuthz{}
			if err := tc.UnmarshalTo(e.extAuthz); err != nil {
				t.Fatalf("%s: %s: %v", path, hf.GetName(), err)
			}
		}
	}
	if e.rateLimit == nil {
		t.Fatalf("%s: no envoy.filters.http.ratelimit filter", path)
	}
	vhs := e.hcm.GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 {
		t.Fatalf("%s: want one virtual host, got %d", path, len(vhs))
	}
	e.vhost = vhs[0]
	for _, c := range b.GetStaticResources().GetClusters() {
		e.clusters[c.GetName()] = c
	}
	return e
}

// request is a representative downstream request.
type request struct {
	headers map[string]string // lower-case names; ":path" included
	remote  string
}

// descriptors computes what Envoy's rate-limit filter sends for req: one descriptor per
// rate_limits entry of the filter's stage (virtual host and route), following Envoy's
// action semantics for the actions the examples use. A missing header or a failed
// header_value_match drops the whole descriptor, as in Envoy.
func descriptors(t *testing.T, rls []*routev3.RateLimit, stage uint32, req request) [][]config.Entry {
	t.Helper()
	var out [][]config.Entry
next:
	for _, rl := range rls {
		if rl.GetStage().GetValue() != stage {
			continue
		}
		var d []config.Entry
		for _, a := range rl.GetActions() {
			switch {
			case a.GetRequestHeaders() != nil:
				rh := a.GetRequestHeaders()
				v, ok := req.headers[strings.ToLower(rh.GetHeaderName())]
				if !ok {
					if rh.GetSkipIfAbsent() {
						continue
					}
					continue next
				}
				d = append(d, config.Entry{Key: rh.GetDescriptorKey(), Value: v})
			case a.GetRemoteAddress() != nil:
				d = append(d, config.Entry{Key: "remote_address", Value: req.remote})
			case a.GetGenericKey() != nil:
				k := a.GetGenericKey().GetDescriptorKey()
				if k == "" {
					k = "generic_key"
				}
				d = append(d, config.Entry{Key: k, Value: a.GetGenericKey().GetDescriptorValue()})
			case a.GetHeaderValueMatch() != nil:
				hv := a.GetHeaderValueMatch()
				match := true
				for _, hm := range hv.GetHeaders() {
					if !headerMatches(t, hm, req.headers) {
						match = false
					}
				}
				expect := hv.GetExpectMatch() == nil || hv.GetExpectMatch().GetValue()
				if match != expect {
					continue next
				}
				k := hv.GetDescriptorKey()
				if k == "" {
					k = "header_match"
				}
				d = append(d, config.Entry{Key: k, Value: hv.GetDescriptorValue()})
			default:
				t.Fatalf("rate_limits action %v: not simulated by this test; extend descriptors()", a)
			}
		}
		if len(d) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func headerMatches(t *testing.T, hm *routev3.HeaderMatcher, h map[string]string) bool {
	t.Helper()
	v, ok := h[strings.ToLower(hm.GetName())]
	var r bool
	switch {
	case hm.GetPresentMatch():
		r = ok
	case hm.GetStringMatch() != nil:
		r = ok && stringMatches(t, hm.GetStringMatch(), v)
	default:
		t.Fatalf("header matcher %v: not simulated by this test", hm)
	}
	return r != hm.GetInvertMatch()
}

func stringMatches(t *testing.T, m *matcherv3.StringMatcher, v string) bool {
	t.Helper()
	if m.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == p.Exact
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, p.Suffix)
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, p.Contains)
	}
	t.Fatalf("string matcher %v: not simulated by this test", m)
	return false
}

// routeRateLimits is every rate_limits entry that applies to a request on the first
// route: the virtual host's plus the route's.
func (e *envoyEdge) routeRateLimits() []*routev3.RateLimit {
	rls := append([]*routev3.RateLimit(nil), e.vhost.GetRateLimits()...)
	if rs := e.vhost.GetRoutes(); len(rs) > 0 {
		rls = append(rls, rs[0].GetRoute().GetRateLimits()...)
	}
	return rls
}

// The representative requests of the demo, and the rule each descriptor must reach.
var demoRequests = []struct {
	name  string
	req   request
	rules []string // Rule.Name per descriptor, in rate_limits order
}{
	{"curl alice", request{map[string]string{":path": "/", "x-user-id": "alice"}, "172.18.0.1"},
		[]string{"per_user", "per_address", "any_path"}},
	{"curl bob", request{map[string]string{":path": "/x", "x-user-id": "bob"}, "172.18.0.1"},
		[]string{"per_user_bob", "per_address", "any_path"}},
	{"anonymous", request{map[string]string{":path": "/"}, "10.1.2.3"},
		[]string{"per_address", "any_path"}},
	{"login with api key", request{map[string]string{":path": "/login?next=/", "x-api-key": "k1"}, "192.0.2.7"},
		[]string{"api_key", "per_address", "remote_address.header_match_login", "any_path"}},
	{"slow path", request{map[string]string{":path": "/slow/report", "x-user-id": "carol"}, "192.0.2.8"},
		[]string{"per_user", "per_address", "slow_path"}},
}

// TestEnvoyGraphQLExample: examples/envoy/envoy-graphql.yaml is a valid bootstrap whose
// ext_authz sends the body halt prices (as raw bytes, cut nowhere: Envoy answers 413
// beyond max_request_bytes, which is the GraphQL route's max_body_bytes and below
// halt's gRPC message cap), and whose rate-limit filter turns the operation header
// ext_authz sets into a descriptor of config/, charged the operation's cost.
func TestEnvoyGraphQLExample(t *testing.T) {
	set := repoConfig(t)
	e := edge(t, repo("examples", "envoy", "envoy-graphql.yaml"))
	a := e.extAuthz
	if a == nil {
		t.Fatal("no ext_authz filter")
	}
	if want := []string{"envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit", "envoy.filters.http.router"}; strings.Join(e.filters, ",") != strings.Join(want, ",") {
		t.Errorf("http_filters = %v, want %v", e.filters, want)
	}
	acfg, err := authz.LoadConfig(repo("examples", "authz", "graphql.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var route *authz.Route
	for i := range acfg.Routes {
		if acfg.Routes[i].GraphQL != nil {
			route = &acfg.Routes[i]
		}
	}
	if route == nil {
		t.Fatal("examples/authz/graphql.yaml has no graphql route")
	}
	wb := a.GetWithRequestBody()
	switch {
	case wb == nil:
		t.Fatal("ext_authz: with_request_body unset: halt cannot see the GraphQL document")
	case int64(wb.GetMaxRequestBytes()) != route.GraphQL.MaxBodyBytes:
		t.Errorf("max_request_bytes %d, the route's max_body_bytes is %d", wb.GetMaxRequestBytes(), route.GraphQL.MaxBodyBytes)
	case wb.GetMaxRequestBytes() >= 1<<20:
		t.Errorf("max_request_bytes %d: halt's gRPC port takes messages up to 1 MiB", wb.GetMaxRequestBytes())
	case wb.GetAllowPartialMessage():
		t.Error("allow_partial_message: a cut document cannot be priced (halt refuses it); let Envoy answer 413")
	case !wb.GetPackAsBytes():
		t.Error("pack_as_bytes: send the body as sent (raw_body)")
	}
	if !strings.HasPrefix(e.vhost.GetRoutes()[0].GetMatch().GetPrefix(), route.Path) {
		t.Errorf("the Envoy route %v does not serve the authz route %s", e.vhost.GetRoutes()[0].GetMatch(), route.Path)
	}
	rls := e.routeRateLimits()
	if len(rls) != 1 || rls[0].GetHitsAddend().GetFormat() != "%REQ("+acfg.UpstreamHeaders.GraphQLCost+")%" {
		t.Fatalf("rate_limits %v: want one entry charged %%REQ(%s)%%", rls, acfg.UpstreamHeaders.GraphQLCost)
	}
	if h := rls[0].GetActions()[0].GetRequestHeaders().GetHeaderName(); h != acfg.UpstreamHeaders.GraphQLOperation {
		t.Errorf("the descriptor reads %s, ext_authz sets %s", h, acfg.UpstreamHeaders.GraphQLOperation)
	}
	domain := e.rateLimit.GetDomain()
	for op, rule := range map[string]string{"Dashboard": "per_operation", "CreateOrder": "create_order"} {
		ds := descriptors(t, rls, 0, request{headers: map[string]string{":path": "/graphql", acfg.UpstreamHeaders.GraphQLOperation: op}})
		if len(ds) != 1 {
			t.Fatalf("%s: descriptors %v", op, ds)
		}
		if r, ok := set.Match(domain, ds[0]); !ok || r.Name != rule {
			t.Errorf("%s: descriptor %v reaches %v, want rule %s", op, ds[0], r, rule)
		}
	}
	// An anonymous operation: ext_authz removed the header, no descriptor is sent.
	if ds := descriptors(t, rls, 0, request{headers: map[string]string{":path": "/graphql"}}); len(ds) != 0 {
		t.Errorf("without the operation header: %v", ds)
	}
}

func TestEnvoyExamples(t *testing.T) {
	set := repoConfig(t)
	for _, file := range []string{"envoy.yaml", "envoy-authz.yaml"} {
		t.Run(file, func(t *testing.T) {
			e := edge(t, repo("examples", "envoy", file))
			rl := e.rateLimit

			// The filter's domain is one halt serves.
			if !contains(set.Domains(), rl.GetDomain()) {
				t.Fatalf("ratelimit domain %q is not a domain of config/ (%v)", rl.GetDomain(), set.Domains())
			}
			if rl.GetEnableXRatelimitHeaders() != ratelimitv3.RateLimit_DRAFT_VERSION_03 {
				t.Errorf("enable_x_ratelimit_headers = %v, want DRAFT_VERSION_03", rl.GetEnableXRatelimitHeaders())
			}
			if rl.GetTimeout() == nil {
				t.Error("ratelimit timeout not set")
			}
			if rl.GetRequestType() == "external" {
				t.Error(`request_type "external" skips RFC 1918 clients, i.e. every docker-compose client`)
			}
			if rl.GetRateLimitService().GetTransportApiVersion() != corev3.ApiVersion_V3 {
				t.Error("rate_limit_service.transport_api_version must be V3")
			}
			if !e.hcm.GetUseRemoteAddress().GetValue() {
				t.Error("use_remote_address must be true for the remote_address action at the edge")
			}

			// Filter order: [ext_authz,] ratelimit, router last.
			want := []string{"envoy.filters.http.ratelimit", "envoy.filters.http.router"}
			if e.extAuthz != nil {
				want = append([]string{"envoy.filters.http.ext_authz"}, want...)
			}
			if strings.Join(e.filters, ",") != strings.Join(want, ",") {
				t.Errorf("http_filters = %v, want %v", e.filters, want)
			}

			// Both filters call the halt cluster over explicit HTTP/2.
			clusters := []string{rl.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName()}
			if e.extAuthz != nil {
				a := e.extAuthz
				clusters = append(clusters, a.GetGrpcService().GetEnvoyGrpc().GetClusterName())
				if a.GetTransportApiVersion() != corev3.ApiVersion_V3 {
					t.Error("ext_authz transport_api_version must be V3")
				}
				if a.GetIncludePeerCertificate() || a.GetWithRequestBody() != nil {
					t.Error("ext_authz: halt needs neither the peer certificate nor the body")
				}
				if a.GetGrpcService().GetTimeout() == nil {
					t.Error("ext_authz grpc_service.timeout not set")
				}
			}
			for _, name := range clusters {
				c := e.clusters[name]
				if c == nil {
					t.Fatalf("cluster %q referenced by a filter is not defined", name)
				}
				opts := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
				po := &upstreamhttpv3.HttpProtocolOptions{}
				if opts == nil || opts.UnmarshalTo(po) != nil || po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
					t.Errorf("cluster %q: gRPC needs explicit_http_config.http2_protocol_options", name)
				}
				if c.GetConnectTimeout() == nil {
					t.Errorf("cluster %q: no connect_timeout", name)
				}
				sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
				if sa.GetAddress() != "halt" || sa.GetPortValue() != 8081 {
					t.Errorf("cluster %q points at %s:%d, want halt:8081 (docker-compose.yaml)", name, sa.GetAddress(), sa.GetPortValue())
				}
			}
			for _, r := range e.vhost.GetRoutes() {
				if c := r.GetRoute().GetCluster(); e.clusters[c] == nil {
					t.Errorf("route to undefined cluster %q", c)
				}
			}

			// The descriptors Envoy sends for representative requests reach the intended rules.
			for _, dr := range demoRequests {
				ds := descriptors(t, e.routeRateLimits(), rl.GetStage(), dr.req)
				var got []string
				for _, d := range ds {
					r, ok := set.Match(rl.GetDomain(), d)
					if !ok {
						t.Errorf("%s: descriptor %v matches no rule of domain %s", dr.name, d, rl.GetDomain())
						got = append(got, "<none>")
						continue
					}
					got = append(got, r.Name)
				}
				if strings.Join(got, ",") != strings.Join(dr.rules, ",") {
					t.Errorf("%s: descriptors %v reach rules %v, want %v", dr.name, ds, got, dr.rules)
				}
			}
		})
	}
}

// TestEnvoyTokenBudgetExample checks examples/envoy/envoy-tokens.yaml, the token budget of
// docs/envoy.md: the route's per-route rate-limit config (where Envoy honours hits_addend
// and apply_on_stream_done) has the request-time check (hits_addend number 0, on the
// request path) and the after-response charge (hits_addend from the x-llm-tokens response
// header, applied when the stream ends); both send the same descriptor, and it reaches the
// rule of config/llm-tokens.yaml, whose charges are report-only.
func TestEnvoyTokenBudgetExample(t *testing.T) {
	set := repoConfig(t)
	path := repo("examples", "envoy", "envoy-tokens.yaml")
	e := edge(t, path)
	rl := e.rateLimit
	if rl.GetDomain() != "llm" || !contains(set.Domains(), "llm") {
		t.Fatalf("ratelimit domain %q: want llm, a domain of config/ (%v)", rl.GetDomain(), set.Domains())
	}
	if rl.GetRateLimitService().GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Error("rate_limit_service.transport_api_version must be V3")
	}
	if len(e.vhost.GetRateLimits()) != 0 {
		t.Error("the virtual host must not add rate_limits of its own: the per-route config replaces them")
	}
	routes := e.vhost.GetRoutes()
	if len(routes) != 1 {
		t.Fatalf("want one route, got %d", len(routes))
	}
	if c := routes[0].GetRoute().GetCluster(); e.clusters[c] == nil {
		t.Errorf("route to undefined cluster %q", c)
	}
	cfg := routes[0].GetTypedPerFilterConfig()["envoy.filters.http.ratelimit"]
	per := &ratelimitv3.RateLimitPerRoute{}
	if cfg == nil || cfg.UnmarshalTo(per) != nil {
		t.Fatalf("the route has no RateLimitPerRoute under envoy.filters.http.ratelimit: %v", cfg)
	}
	validateDeep(t, path, per)
	rls := per.GetRateLimits()
	if len(rls) != 2 {
		t.Fatalf("want 2 rate_limits (the check and the charge), got %d", len(rls))
	}
	check, charge := rls[0], rls[1]
	if check.GetApplyOnStreamDone() || check.GetHitsAddend().GetNumber() == nil || check.GetHitsAddend().GetNumber().GetValue() != 0 {
		t.Errorf("rate_limits[0] must be the request-time check: hits_addend.number 0, not on stream done: %v", check)
	}
	if !charge.GetApplyOnStreamDone() || charge.GetHitsAddend().GetFormat() != "%RESP(x-llm-tokens)%" || charge.GetHitsAddend().GetIsNegativeHits() {
		t.Errorf("rate_limits[1] must be the charge on stream done, hits_addend from the x-llm-tokens response header: %v", charge)
	}
	req := request{map[string]string{":path": "/v1/chat/completions", "x-api-key": "k-123"}, "192.0.2.9"}
	for i, one := range rls {
		ds := descriptors(t, []*routev3.RateLimit{one}, 0, req)
		if len(ds) != 1 {
			t.Fatalf("rate_limits[%d] sends %d descriptors, want 1", i, len(ds))
		}
		r, ok := set.Match("llm", ds[0])
		if !ok || r.Name != "tokens" {
			t.Fatalf("rate_limits[%d]: descriptor %v reaches %v, want the tokens rule", i, ds[0], r)
		}
		if !r.Charges.ReportOnly || r.Charges.MaxDebt != 20000 || !r.Charges.Drain() {
			t.Errorf("the tokens rule's charges %+v: want report_only, max_debt 20000", r.Charges)
		}
	}
}
