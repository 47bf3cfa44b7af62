package authz

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/graphql"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// Server implements envoy.service.auth.v3.Authorization on the rate-limit engine.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	engine  *engine.Engine
	rules   func() *config.Set
	config  func() *Config
	log     *slog.Logger
	metrics *metrics.Metrics
	// invalidKeyLog and penaltyLog keep lines that an attacker (invalid keys) or an outage
	// (the penalty store) could make per call to one per lograte.DefaultInterval;
	// detectionLog the abuse detections' lines, per detector.
	invalidKeyLog, penaltyLog *lograte.Limiter
	detectionLog              map[string]*lograte.Limiter
	// detections records why identities were penalised (the admin API reads it).
	detections *abuse.Record
	// duration and ok are the request metrics' children of Check, resolved once.
	duration prometheus.Observer
	ok       prometheus.Counter
	// pool holds the per-call descriptors and decisions handed to the engine.
	pool sync.Pool
}

// callScratch is what one Check hands the engine: at most a plan's descriptor and a
// route policy's.
type callScratch struct {
	descs     [2]engine.Descriptor
	decisions [2]engine.Decision
	entries   [4]config.Entry
}

// SetDetections makes the server record its abuse detections in r (shared with the
// admin API); New gives it a record of its own.
func (s *Server) SetDetections(r *abuse.Record) { s.detections = r }

// Detections is where the server records its abuse detections.
func (s *Server) Detections() *abuse.Record { return s.detections }

// New returns the ext_authz server. config returns the current authz configuration
// (nil: not configured, every call answers UNAVAILABLE so Envoy's failure_mode_allow
// decides). A nil m counts into the engine's metrics.
func New(engine *engine.Engine, rules func() *config.Set, config func() *Config, log *slog.Logger, m *metrics.Metrics) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = engine.Metrics()
	}
	dl := map[string]*lograte.Limiter{}
	for _, d := range []string{abuse.Fanout, abuse.AuthFailures, abuse.NetworkChange, abuse.SpikeDetector} {
		dl[d] = lograte.New(lograte.DefaultInterval)
	}
	s := &Server{engine: engine, rules: rules, config: config, log: log, metrics: m,
		invalidKeyLog: lograte.New(lograte.DefaultInterval), penaltyLog: lograte.New(lograte.DefaultInterval),
		detectionLog: dl, detections: abuse.NewRecord(DefaultDetectionIdentities, DefaultDetectionsPerIdentity),
		duration: m.RequestDuration.WithLabelValues("Check"), ok: m.Requests.WithLabelValues("Check", codes.OK.String())}
	s.pool.New = func() any { return new(callScratch) }
	return s
}

// Limits on what a Check reads from a request: a larger header is not a key we issued.
const (
	maxKeyLen      = 4096
	maxIdentityLen = 1024
)

// request is what Check needs from a CheckRequest.
type request struct {
	// path is the request's path with dot segments resolved (config.CleanPath): routes
	// match on it. rawPath is the path as received (query dropped, rooted): exemptions
	// judge it, by the domain's exemptions.path_match.
	method, path, rawPath, source string
	// addr is source as an identity (Config.Address: IPv6 by its network), "" without
	// a source: the source_address customer, invalid_key_penalty's lockout and the
	// address-keyed detectors charge it.
	addr string
	// ip is source parsed (the zero Addr without one), which addr is keyed from.
	ip netip.Addr
	// rawQuery is the URL's query string (a GraphQL GET carries its query there).
	rawQuery string
	// target is the path with its query as received (an idempotency key's scope).
	target    string
	headers   map[string]string
	headerMap *corev3.HeaderMap
	http      *authv3.AttributeContext_HttpRequest
}

// body is the request body Envoy sent (with_request_body: raw_body, else body), nil
// for none.
func (r *request) body() []byte {
	if b := r.http.GetRawBody(); len(b) > 0 {
		return b
	}
	if b := r.http.GetBody(); b != "" {
		return []byte(b)
	}
	return nil
}

func (r *request) header(name string) string {
	if v, ok := r.headers[name]; ok {
		return v
	}
	if r.headerMap != nil {
		for _, h := range r.headerMap.GetHeaders() {
			if strings.EqualFold(h.GetKey(), name) {
				if v := h.GetValue(); v != "" {
					return v
				}
				return string(h.GetRawValue())
			}
		}
	}
	return ""
}

func parseRequest(req *authv3.CheckRequest) *request {
	attrs := req.GetAttributes()
	h := attrs.GetRequest().GetHttp()
	r := &request{method: strings.ToUpper(h.GetMethod()), headers: h.GetHeaders(), headerMap: h.GetHeaderMap(), http: h}
	p := h.GetPath()
	if p == "" {
		p = r.header(":path")
	}
	r.target = p
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		if p[i] == '?' {
			r.rawQuery, _, _ = strings.Cut(p[i+1:], "#")
		}
		p = p[:i]
	}
	// Routes see dot segments resolved, so "/v1/../admin" is judged as "/admin".
	// Percent-encoded slashes are not decoded: "%2F" never splits a template segment.
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	r.rawPath, r.path = p, config.CleanPath(p)
	if sa := attrs.GetSource().GetAddress().GetSocketAddress(); sa != nil {
		// The canonical text (IPv4-mapped as IPv4): exemptions and logs see the exact
		// address; r.addr, the identity (the source_address customer, the lockouts and
		// the address-keyed detectors), is set by check under the config's prefix.
		if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil {
			r.ip = ip.Unmap().WithZone("")
			r.source = r.ip.String()
		}
	}
	return r
}

// identity is who is calling.
type identity struct {
	customer, plan string
	how            string // api_key, header, source_address, anonymous
	// key is the SHA-256 of the API key that identified the caller (zero for another
	// source: keyed): the abuse detectors' key identity, encoded only when one asks.
	key [sha256.Size]byte
}

// keyed reports whether an API key identified the caller (key is its SHA-256).
func (id *identity) keyed() bool { return id.how == "api_key" }

// tenant is the caller's shelf of the persisted-query cache: its customer when an API
// key or a header (an upstream authenticator's) named it, "" (one shelf shared by all)
// for a caller known only by its source address. Addresses are cheap to come by (a /48
// holds 65,536 /64s): a shelf each would let a flood of them push every customer's
// texts out, and their hash-only requests up to unknown_cost. No customer is "": a
// key's customer and a header's value are never empty.
func (id *identity) tenant() string {
	if id.how == "source_address" {
		return ""
	}
	return id.customer
}

// keySum is the identifying key's SHA-256 in hex ("" for another source).
func (id *identity) keySum() string {
	if !id.keyed() {
		return ""
	}
	return hex.EncodeToString(id.key[:])
}

// outcome of identification when no identity was found.
type idFailure struct {
	// key is the SHA-256 of the unknown key presented (presented: false for none, the
	// key missing altogether).
	key       [sha256.Size]byte
	presented bool
}

// keySum is the unknown key's SHA-256 in hex ("" for none).
func (f *idFailure) keySum() string {
	if !f.presented {
		return ""
	}
	return hex.EncodeToString(f.key[:])
}

// Check authorizes one request: exemptions, penalty, quotas, rate limits, in that order.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	resp, err := s.check(ctx, req)
	s.duration.Observe(time.Since(start).Seconds())
	if err == nil {
		s.ok.Inc()
	} else {
		s.metrics.Requests.WithLabelValues("Check", status.Code(err).String()).Inc()
	}
	return resp, err
}

func (s *Server) check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	cfg := s.config()
	set := s.rules()
	if cfg == nil || set == nil {
		return nil, status.Error(codes.Unavailable, "ext_authz is not configured (start halt-envoy with --authz-config)")
	}
	r := parseRequest(req)
	r.addr, _ = cfg.Address(r.ip)
	route := cfg.matchRoute(r.method, r.path)

	// Exemptions first: health checks and internal ranges are never counted. An exempt
	// route (matched on the resolved path) exempts only the path as received, in normal
	// form, unless the domain's exemptions say path_match: normalized.
	if route != nil && route.Exempt && ((r.rawPath == r.path && config.NormalPath(r.rawPath)) || set.NormalizesPaths(cfg.Domain)) {
		return s.allow(cfg, nil, nil, nil, "route"), nil
	}
	if reason, ok := s.engine.ExemptRequest(cfg.Domain, r.source, r.rawPath); ok {
		return s.allow(cfg, nil, nil, nil, reason), nil
	}

	// An address locked out for guessing keys is refused before its key is even looked
	// at: answering a right key differently from a wrong one would tell a brute-forcer
	// which guess was right.
	pol := s.invalidKeyPenalty(cfg, set)
	if pol != nil && r.addr != "" {
		if locked := s.lockedOut(ctx, cfg, pol, addressEntries(r.addr), 0, invalidKeyLockout); locked != nil {
			return locked, nil
		}
	}
	ab := s.abusePenalty(cfg, set)
	if ab != nil && ab != pol && r.addr != "" && !cfg.Abuse.DryRun {
		if locked := s.lockedOut(ctx, cfg, ab, addressEntries(r.addr), 0, abuseLockout); locked != nil {
			return locked, nil
		}
	}
	id, fail := s.identify(cfg, r)
	if ab != nil {
		if refused := s.detect(ctx, cfg, ab, r, id, fail); refused != nil {
			return refused, nil
		}
	}
	if id == nil {
		return s.refuseIdentity(ctx, cfg, pol, ab, r, fail)
	}
	// A wrong key the anonymous fallback served is still a wrong key: it counts against
	// the address as it would have with a 401, or anonymous would give a guesser keys
	// without bound and a different answer for the right one.
	if !id.keyed() && fail.presented {
		if locked := s.invalidKey(ctx, cfg, pol, r, fail); locked != nil {
			return locked, nil
		}
	}

	cost := int64(1)
	routeName := ""
	var gq *graphql.Result
	if route != nil {
		cost, routeName = route.Cost, route.Name
		if route.pricer != nil {
			res, refused := s.priceGraphQL(route, r, id.tenant())
			if refused != nil {
				return refused, nil
			}
			cost, gq = res.Cost, res
		}
	}
	sc := s.pool.Get().(*callScratch)
	defer func() {
		*sc = callScratch{} // drop the request's values and the rules' references
		s.pool.Put(sc)
	}()
	sc.entries = [4]config.Entry{{Key: "customer", Value: id.customer}, {Key: "plan", Value: id.plan},
		{Key: "customer", Value: id.customer}, {Key: "route", Value: routeName}}
	sc.descs[0] = engine.Descriptor{Entries: sc.entries[0:2:2], Hits: uint64(cost)}
	descs := sc.descs[:1]
	if route != nil && route.Policy != "" {
		if rule, ok := set.Policy(route.Policy); ok {
			sc.descs[1] = engine.Descriptor{Entries: sc.entries[2:4:4], Hits: uint64(cost), Rule: rule}
			descs = sc.descs[:2]
		} else {
			s.log.Warn("route names an unknown policy; only the plan's limits apply", "route", routeName, "policy", route.Policy)
		}
	}
	// An Idempotency-Key makes the call decided once (the rules' idempotency_ttl).
	if k := r.header("idempotency-key"); k != "" {
		if p, bad := headers.BadIdempotencyKey(k); bad {
			return problem(p, nil), nil
		}
		// The key stands for this request only: its method, target and body (when
		// Envoy sent one) must match too, or a reuse is a conflict.
		scope := engine.IdempotencyScope(r.method, r.target, r.body())
		for i := range descs {
			descs[i].IdempotencyKey, descs[i].IdempotencyScope = k, scope
		}
	}
	decisions := sc.decisions[:len(descs)]
	if _, err := s.engine.Check(ctx, cfg.Domain, descs, decisions); err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			return nil, err
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	// The first stage that failed decides (penalty, then quota, then rate); else the
	// tightest limit is reported.
	report := engine.Report(decisions)
	if report != nil && report.Code == engine.CodeOverLimit {
		// A lockout under another penalty than the address's own is a failure
		// auth_failures counts.
		p := headers.Refusal(report)
		if p.Status == 403 && !addressLockout(cfg, ab, p.Policy) {
			s.authFailure(ctx, cfg, ab, r)
		}
		return s.deny(cfg, p, report), nil
	}
	// Upstream learns the plan the call was limited as: an unknown plan was served as
	// the default plan, and a service gating features by this header must never see a
	// plan the customer does not have.
	if rule := decisions[0].Rule; rule != nil && rule.Plan != "" {
		id.plan = rule.Plan
	} else if !set.HasPlan(id.plan) {
		id.plan = set.DefaultPlan()
	}
	resp := s.allow(cfg, id, report, &routeName, "")
	if cfg.graphql {
		graphqlAnswer(cfg, resp, gq)
	}
	return resp, nil
}

// priceGraphQL prices a GraphQL route's request for tenant (identity.tenant: the
// customer, whose persisted queries are its own, or "" for the callers known only by
// their address, who share theirs): its result, or the 400 that refuses it,
// naming the rule it broke (violated_policy graphql:RULE).
func (s *Server) priceGraphQL(route *compiledRoute, r *request, tenant string) (*graphql.Result, *authv3.CheckResponse) {
	body := r.body()
	res, err := route.pricer.Price(graphql.Request{
		Method:      r.method,
		ContentType: r.header("content-type"),
		RawQuery:    r.rawQuery,
		Body:        body,
		Partial:     strings.EqualFold(r.header("x-envoy-auth-partial-body"), "true"),
		Tenant:      tenant,
	})
	if err != nil {
		rule, detail := "syntax", err.Error()
		var rf *graphql.Refusal
		if errors.As(err, &rf) {
			rule, detail = rf.Rule, rf.Detail
		}
		s.metrics.GraphQLRefusals.WithLabelValues(route.Name, rule).Inc()
		return nil, problem(headers.Problem{Status: 400, Title: "Bad Request", Detail: detail, Policy: "graphql:" + rule}, nil)
	}
	s.metrics.GraphQLCost.WithLabelValues(route.Name).Observe(float64(res.Cost))
	return &res, nil
}

// graphqlAnswer adds a GraphQL route's operation name, cost and persisted-query hash to
// an allowed answer (upstream headers and dynamic metadata), and removes the headers a
// request has no value for: a client must never be able to send its own.
func graphqlAnswer(cfg *Config, resp *authv3.CheckResponse, gq *graphql.Result) {
	ok := resp.GetOkResponse()
	if ok == nil {
		return
	}
	var names, hashes, types []string
	cost := ""
	if gq != nil {
		for _, op := range gq.Operations {
			if op.Name != "" {
				names = append(names, op.Name)
			}
			if op.Hash != "" {
				hashes = append(hashes, op.Hash)
			}
			types = append(types, op.Type)
		}
		cost = strconv.FormatInt(gq.Cost, 10)
	}
	uh := cfg.UpstreamHeaders
	meta := map[string]string{}
	for _, h := range []struct{ name, value, key string }{
		{uh.GraphQLOperation, strings.Join(names, ","), "graphql_operation"},
		{uh.GraphQLCost, cost, "graphql_cost"},
		{uh.GraphQLHash, strings.Join(hashes, ","), "graphql_hash"},
	} {
		if h.value == "" {
			ok.HeadersToRemove = append(ok.HeadersToRemove, h.name)
			continue
		}
		ok.Headers = append(ok.Headers, hv(h.name, h.value))
		meta[h.key] = h.value
	}
	if gq == nil {
		return
	}
	meta["graphql_operation_type"] = strings.Join(types, ",")
	if resp.DynamicMetadata == nil {
		resp.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	for k, v := range meta {
		resp.DynamicMetadata.Fields[k] = structpb.NewStringValue(v)
	}
}

// identify walks the configured identity sources in order.
func (s *Server) identify(cfg *Config, r *request) (*identity, idFailure) {
	var fail idFailure
	for _, src := range cfg.Identity {
		switch {
		case src.APIKey != nil:
			key := r.header(src.APIKey.Header)
			if key == "" && src.APIKey.Bearer {
				if auth := r.header("authorization"); len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
					key = strings.TrimSpace(auth[7:])
				}
			}
			if key == "" {
				continue
			}
			sum := sha256.Sum256([]byte(key))
			if k, ok := cfg.keys[sum]; ok && len(key) <= maxKeyLen {
				return &identity{customer: k.Customer, plan: k.Plan, how: "api_key", key: sum}, fail
			}
			fail = idFailure{key: sum, presented: true}
			if cfg.Anonymous == nil {
				return nil, fail
			}
		case src.Header != "":
			// Not UTF-8: no identity (it would be sent upstream, and an answer holding
			// it could not be encoded).
			if v := r.header(src.Header); v != "" && len(v) <= maxIdentityLen && utf8.ValidString(v) {
				return &identity{customer: v, plan: s.anonPlan(cfg), how: "header"}, fail
			}
		case src.SourceAddress:
			// The address as an identity (IPv6 by its network, as the lockouts key it):
			// keyed by the exact address, a client rotating through its /64 would get a
			// fresh limit and quota at every address.
			if r.addr != "" {
				return &identity{customer: "ip:" + r.addr, plan: s.anonPlan(cfg), how: "source_address"}, fail
			}
		}
	}
	return nil, fail
}

// anonPlan is the plan of callers identified without a key: anonymous.plan, else the
// rate-limit config's default plan.
func (s *Server) anonPlan(cfg *Config) string {
	if cfg.Anonymous != nil {
		return cfg.Anonymous.Plan
	}
	if set := s.rules(); set != nil {
		return set.DefaultPlan()
	}
	return ""
}

// invalidKeyPenalty is the penalty policy charged for invalid keys, nil when none is
// configured (or it names no penalty of the rate-limit config).
func (s *Server) invalidKeyPenalty(cfg *Config, set *config.Set) *config.PenaltyPolicy {
	if cfg.InvalidKeyPenalty == "" {
		return nil
	}
	pol, ok := set.PenaltyPolicy(cfg.InvalidKeyPenalty)
	if !ok {
		return nil
	}
	return pol
}

// What a lockout's 403 says (its detail); lockedOut also tells by it which penalty's
// store failure it logs.
const (
	invalidKeyLockout = "too many invalid API keys from this address; locked out"
	abuseLockout      = "abuse detected; locked out"
)

// lockedOut charges severity points (0: only reads) of pol to the identity entries who
// and returns the 403 to answer when they are locked out (detail: invalidKeyLockout,
// abuseLockout), nil otherwise. A store failure is logged (throttled) and lets the call
// go on: a lockout fails open, as the rest of a call follows its rule's failure mode.
func (s *Server) lockedOut(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, who []config.Entry, severity int64, detail string) *authv3.CheckResponse {
	locked, left, err := s.engine.Penalize(ctx, cfg.Domain, who, pol, severity)
	if err != nil {
		if ok, held := s.penaltyLog.Allow(time.Now()); ok {
			msg := "abuse penalty unavailable"
			if detail == invalidKeyLockout {
				msg = "invalid-key penalty unavailable"
			}
			s.log.Warn(msg, "err", err, "similar_suppressed", held)
		}
		return nil
	}
	if !locked {
		return nil
	}
	return lockout(pol, left, detail)
}

// lockout is the 403 of an identity locked out under pol for left.
func lockout(pol *config.PenaltyPolicy, left time.Duration, detail string) *authv3.CheckResponse {
	return problem(headers.Problem{Status: 403, Title: "Forbidden", Detail: detail, Policy: "penalty:" + pol.Name, WaitUS: left.Microseconds()}, nil)
}

// refuseIdentity answers a caller without a valid key: 401, or 403 when this invalid
// key locked its address out. Every invalid key counts against the address (pol, nil
// when invalid_key_penalty is not set); the lockout itself was checked before.
func (s *Server) refuseIdentity(ctx context.Context, cfg *Config, pol, ab *config.PenaltyPolicy, r *request, fail idFailure) (*authv3.CheckResponse, error) {
	detail := "a valid API key is required"
	if fail.presented {
		detail = "the API key is not valid"
		if locked := s.invalidKey(ctx, cfg, pol, r, fail); locked != nil {
			return locked, nil
		}
	}
	// A 401 is a failure auth_failures counts (ab: the abuse penalty, nil without one).
	s.authFailure(ctx, cfg, ab, r)
	return problem(headers.Problem{Status: 401, Title: "Unauthorized", Detail: detail}, []*corev3.HeaderValueOption{hv("WWW-Authenticate", `Bearer realm="halt"`)}), nil
}

// invalidKey logs (throttled) the invalid key fail presented and charges it to the
// address under pol (invalid_key_penalty, nil without one): the 403 when that locks the
// address out, nil otherwise.
func (s *Server) invalidKey(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, r *request, fail idFailure) *authv3.CheckResponse {
	if ok, held := s.invalidKeyLog.Allow(time.Now()); ok {
		s.log.Info("invalid API key", "key_sha256_prefix", hex.EncodeToString(fail.key[:4]), "source", r.source, "path", r.path, "similar_suppressed", held)
	}
	if pol == nil || r.addr == "" {
		return nil
	}
	return s.lockedOut(ctx, cfg, pol, addressEntries(r.addr), pol.Severity, invalidKeyLockout)
}

// deny answers a call a stage refused with p, its headers.Refusal: a penalty lockout is
// 403 with Retry-After and no rate-limit headers (headers.Of has none for it: a lockout
// is not a quota); a rate limit or quota is 429 with the rate-limit headers of the
// refusing limit and Retry-After.
func (s *Server) deny(cfg *Config, p headers.Problem, d *engine.Decision) *authv3.CheckResponse {
	return problem(p, s.rateHeaders(cfg, d))
}

// okAnswer is an allowed answer and the messages it points to, allocated together.
type okAnswer struct {
	resp   authv3.CheckResponse
	status rpcstatus.Status
	wrap   authv3.CheckResponse_OkResponse
	ok     authv3.OkHttpResponse
	up     [2]hvBlock
	upPtrs [2]*corev3.HeaderValueOption
	meta   structpb.Struct
	vals   [5]structpb.Value
	strs   [5]structpb.Value_StringValue
}

func (s *Server) allow(cfg *Config, id *identity, report *engine.Decision, route *string, exempt string) *authv3.CheckResponse {
	a := new(okAnswer)
	a.status.Code = int32(codes.OK)
	a.wrap.OkResponse = &a.ok
	a.resp.Status, a.resp.HttpResponse = &a.status, &a.wrap
	var meta [5][2]string
	n := 0
	if id != nil {
		a.up[0].set(cfg.UpstreamHeaders.Customer, id.customer)
		a.upPtrs[0] = &a.up[0].opt
		a.ok.Headers = a.upPtrs[:1]
		if id.plan != "" {
			a.up[1].set(cfg.UpstreamHeaders.Plan, id.plan)
			a.upPtrs[1] = &a.up[1].opt
			a.ok.Headers = a.upPtrs[:2]
		}
		meta[0], meta[1], meta[2] = [2]string{"customer", id.customer}, [2]string{"plan", id.plan}, [2]string{"identity", id.how}
		n = 3
	}
	if route != nil && *route != "" {
		meta[n] = [2]string{"route", *route}
		n++
	}
	if exempt != "" {
		meta[n] = [2]string{"exempt", exempt}
		n++
	}
	if report != nil {
		a.ok.ResponseHeadersToAdd = s.rateHeaders(cfg, report)
	}
	if n > 0 && validUTF8(meta[:n]) {
		// What structpb.NewStruct builds (it refuses a string that is not UTF-8, and
		// then there is no metadata at all), without its map of any in between.
		a.meta.Fields = make(map[string]*structpb.Value, n)
		for i, kv := range meta[:n] {
			a.strs[i].StringValue = kv[1]
			a.vals[i].Kind = &a.strs[i]
			a.meta.Fields[kv[0]] = &a.vals[i]
		}
		a.resp.DynamicMetadata = &a.meta
	}
	return &a.resp
}

func validUTF8(kvs [][2]string) bool {
	for _, kv := range kvs {
		if !utf8.ValidString(kv[1]) {
			return false
		}
	}
	return true
}

// hvBlock is a header option and its header, allocated together.
type hvBlock struct {
	opt corev3.HeaderValueOption
	hv  corev3.HeaderValue
}

func (b *hvBlock) set(k, v string) {
	b.hv.Key, b.hv.Value = k, v
	b.opt.Header, b.opt.AppendAction = &b.hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
}

func (s *Server) rateHeaders(cfg *Config, d *engine.Decision) []*corev3.HeaderValueOption {
	if d == nil || d.Limit == nil {
		return nil
	}
	v, ok := headers.Of(d.Rule, d.Limit, &d.Result)
	if !ok {
		return nil
	}
	// Every header of every family in two allocations: the options with their headers,
	// and the slice of pointers to them (room for the two a denial adds).
	var kv [maxRateHeaders][2]string
	n := 0
	cfg.families.Render(&v, func(k, val string) {
		if n < len(kv) {
			kv[n] = [2]string{k, val}
			n++
		}
	})
	if n == 0 {
		return nil
	}
	blocks := make([]hvBlock, n)
	out := make([]*corev3.HeaderValueOption, n, n+2)
	for i := range blocks {
		blocks[i].set(kv[i][0], kv[i][1])
		out[i] = &blocks[i].opt
	}
	return out
}

// maxRateHeaders bounds the rate-limit headers of one answer: three X-RateLimit and two
// IETF ones (headers.Families.Render).
const maxRateHeaders = 8

func hv(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
}

// grpcCode is the CheckResponse status of a denial with HTTP status httpStatus, by
// google.rpc.Code's meanings (docs/authz.md#answers): 409, a request with the same
// Idempotency-Key still being decided, is a concurrency conflict to retry later
// (ABORTED); 422, the key first used for another request, fails on the system's state
// (what the key was first used for), not on the request alone (FAILED_PRECONDITION).
// Anything else refused (403, a lockout) is PERMISSION_DENIED.
func grpcCode(httpStatus int) codes.Code {
	switch httpStatus {
	case 400:
		return codes.InvalidArgument
	case 401:
		return codes.Unauthenticated
	case 409:
		return codes.Aborted
	case 422:
		return codes.FailedPrecondition
	case 429:
		return codes.ResourceExhausted
	}
	return codes.PermissionDenied
}

// problem builds a denied response: p's status, problem body and Retry-After, after the
// headers hdrs.
func problem(p headers.Problem, hdrs []*corev3.HeaderValueOption) *authv3.CheckResponse {
	if ra, ok := p.RetryAfter(); ok {
		hdrs = append(hdrs, hv("Retry-After", ra))
	}
	hdrs = append(hdrs, hv("Content-Type", headers.ContentType))
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpcCode(p.Status)), Message: p.Detail},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(p.Status)},
			Headers: hdrs,
			Body:    string(p.Body()),
		}},
	}
}
