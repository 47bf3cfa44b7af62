// Package middleware rate-limits a net/http server with halt-envoy's engine: the
// protection halt-envoy gives services behind Envoy, for a Go service that has no Envoy
// in front, decided by the same engine against the same configuration.
//
// The simple case is one preset, one store, one line:
//
//	http.ListenAndServe(":8080", middleware.MustLimit(store, halt.Preset("PUBLIC_API"))(mux))
//
// The general case loads the YAML the Envoy mesh uses and derives descriptors from each
// request as Envoy's rate-limit actions would (the client address, a header, the
// authenticated user, the route):
//
//	h, err := halt.New(store, halt.Load("config"))
//	limit, err := middleware.New(h, middleware.Domain("api"),
//		middleware.Descriptor(middleware.Header("x-customer-id", "customer"), middleware.Header("x-plan", "plan")))
//
// Every request is first probed against the domain's exemptions with its client address
// and path; then its descriptors are decided, and it is answered as ext_authz answers:
// the rate-limit headers of the reported limit, and on a refusal 429 (a rate limit or
// quota) or 403 (a penalty lockout) with Retry-After and a problem+json body. A request
// carrying an Idempotency-Key is decided once under a rule with idempotency_ttl, as
// ext_authz decides it: a repeat gets the first answer and is not charged again, the key
// reused for another request is answered 422, a repeat while the first is still being
// decided 409, and a key over 255 bytes 400. The middleware decides nothing itself.
package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

// Headers selects the rate-limit response header families (IETF: RateLimit and
// RateLimit-Policy; XRateLimit: X-RateLimit-*), as the server's --headers flag does.
type Headers = halt.Headers

// Option configures the middleware.
type Option func(*settings)

type settings struct {
	domain  string
	descs   [][]Entry
	trusted []netip.Prefix
	cost    func(*http.Request) int64
	headers Headers
	log     *slog.Logger
}

// Domain names the configuration's domain requests are decided in; by default the
// configuration's only domain (New fails when it has several).
func Domain(name string) Option { return func(s *settings) { s.domain = name } }

// Descriptor adds a descriptor the middleware derives from every request, made of
// entries in order, as one of Envoy's rate_limits (a list of actions) makes one. A
// request for which an entry has no value (a header it lacks) does not get this
// descriptor, as Envoy sends none; a request with no descriptor at all passes
// unlimited. Without this option there is one descriptor: RemoteAddress().
func Descriptor(entries ...Entry) Option {
	return func(s *settings) { s.descs = append(s.descs, slices.Clone(entries)) }
}

// TrustProxies makes the client address come from X-Forwarded-For when the request
// arrives from one of these proxies: the header is read from the right, skipping trusted
// hops, so a client cannot pick its own address by sending the header itself.
func TrustProxies(proxies ...netip.Prefix) Option {
	return func(s *settings) { s.trusted = append(s.trusted, proxies...) }
}

// WithCost makes some requests count more than one hit on each descriptor (Envoy's
// hits_addend; a rule's cost multiplies it); 0 checks without counting. A negative cost
// is a programming error, answered 500.
func WithCost(f func(*http.Request) int64) Option { return func(s *settings) { s.cost = f } }

// WithHeaders selects the header families; both are on by default.
func WithHeaders(h Headers) Option { return func(s *settings) { s.headers = h } }

// WithLogger receives the requests the middleware could not decide (503, 400, 500),
// at most one line per 10 s; the default discards them. Store failures are the Engine's
// to log (halt.WithLogger).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.log = l } }

// Entry is one entry of a descriptor derived from a request: its key and where its value
// comes from.
type Entry struct {
	key   string
	value func(*request) (string, bool)
}

// request is one request and what the entries read from it once.
type request struct {
	r       *http.Request
	trusted []netip.Prefix
	addr    netip.Addr
	hasAddr bool
}

func (q *request) clientAddr() netip.Addr {
	if !q.hasAddr {
		q.addr, q.hasAddr = ClientAddr(q.r, q.trusted), true
	}
	return q.addr
}

// RemoteAddress is the entry (remote_address, client address): Envoy's remote_address
// action, with TrustProxies as Envoy's xff_num_trusted_hops. A request whose address
// does not parse has none.
func RemoteAddress() Entry {
	return Entry{key: halt.AddressKey, value: func(q *request) (string, bool) {
		a := q.clientAddr()
		if !a.IsValid() {
			return "", false
		}
		return a.String(), true
	}}
}

// Header is the entry (key, the value of header name): Envoy's request_headers action.
// A request without the header has none.
func Header(name, key string) Entry {
	name = http.CanonicalHeaderKey(name)
	return Entry{key: key, value: func(q *request) (string, bool) {
		v := q.r.Header[name]
		if len(v) == 0 || v[0] == "" {
			return "", false
		}
		return v[0], true
	}}
}

// Path is the entry (path, the request's path as received, without its query): what
// the configuration's exempt paths and path rules match.
func Path() Entry {
	return Entry{key: halt.PathKey, value: func(q *request) (string, bool) { return rawPath(q.r), true }}
}

// GenericKey is the constant entry (key, value): Envoy's generic_key action, to tell a
// group of routes apart (wrap them with their own middleware).
func GenericKey(key, value string) Entry {
	return Entry{key: key, value: func(*request) (string, bool) { return value, true }}
}

// FromRequest is the entry (key, f(r)); an empty value is none. It reads anything the
// application knows: a tenant from the host, a claim from a verified token.
func FromRequest(key string, f func(*http.Request) string) Entry {
	return Entry{key: key, value: func(q *request) (string, bool) {
		v := f(q.r)
		return v, v != ""
	}}
}

type userKey struct{}

// WithUser returns ctx carrying the authenticated user, for User entries: an
// authentication middleware in front of this one sets it.
func WithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// UserFrom returns the user WithUser put in ctx.
func UserFrom(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(userKey{}).(string)
	return u, ok && u != ""
}

// User is the entry (key, the authenticated user of WithUser); an unauthenticated
// request has none.
func User(key string) Entry {
	return Entry{key: key, value: func(q *request) (string, bool) { return UserFrom(q.r.Context()) }}
}

// Route is the entry (key, the pattern of mux that serves the request, "GET
// /items/{id}"): one counter per route, whatever the path's values. A request mux has
// no route for has none.
func Route(key string, mux *http.ServeMux) Entry {
	return Entry{key: key, value: func(q *request) (string, bool) {
		_, p := mux.Handler(q.r)
		return p, p != ""
	}}
}

// Limit builds an Engine on store and cfg with its defaults (halt.New) and returns the
// middleware over it (New).
func Limit(store backends.Store, cfg halt.Config, opts ...Option) (func(http.Handler) http.Handler, error) {
	h, err := halt.New(store, cfg)
	if err != nil {
		return nil, err
	}
	return New(h, opts...)
}

// MustLimit is Limit for a configuration known to be good (a preset, a configuration
// checked by the server's validate): it panics on an error, as regexp.MustCompile does,
// so that a program with a bad configuration never starts.
func MustLimit(store backends.Store, cfg halt.Config, opts ...Option) func(http.Handler) http.Handler {
	mw, err := Limit(store, cfg, opts...)
	if err != nil {
		panic(fmt.Sprintf("middleware.MustLimit: %v", err))
	}
	return mw
}

// New returns middleware that decides every request with h.
func New(h *halt.Engine, opts ...Option) (func(http.Handler) http.Handler, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: nil engine", halt.ErrInvalid)
	}
	s := &settings{headers: Headers{IETF: true, XRateLimit: true}}
	for _, o := range opts {
		if o != nil {
			o(s)
		}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	doms := h.Domains()
	switch {
	case s.domain == "" && len(doms) == 1:
		s.domain = doms[0]
	case s.domain == "":
		return nil, fmt.Errorf("%w: the configuration has %d domains (%v): name one with Domain", halt.ErrInvalid, len(doms), doms)
	case !slices.Contains(doms, s.domain):
		return nil, fmt.Errorf("%w: domain %q is not in the configuration (have: %v)", halt.ErrInvalid, s.domain, doms)
	}
	if len(s.descs) == 0 {
		s.descs = [][]Entry{{RemoteAddress()}}
	}
	for i, d := range s.descs {
		if len(d) == 0 {
			return nil, fmt.Errorf("%w: descriptor %d has no entries", halt.ErrInvalid, i)
		}
		for j, e := range d {
			if e.key == "" || e.value == nil {
				return nil, fmt.Errorf("%w: descriptor %d entry %d has no key (build entries with RemoteAddress, Header, ...)", halt.ErrInvalid, i, j)
			}
		}
	}
	m := &middleware{h: h, s: s, failLog: lograte.New(lograte.DefaultInterval)}
	m.pool.New = func() any { return new(scratch) }
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { m.serve(w, r, next) })
	}, nil
}

type middleware struct {
	h       *halt.Engine
	s       *settings
	pool    sync.Pool // *scratch
	failLog *lograte.Limiter
}

type scratch struct {
	descs   []halt.Descriptor
	entries []halt.Entry
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	q := request{r: r, trusted: m.s.trusted}
	if _, exempt := m.h.Exempt(m.s.domain, q.clientAddr(), rawPath(r)); exempt {
		next.ServeHTTP(w, r)
		return
	}
	sc := m.pool.Get().(*scratch)
	defer func() {
		// The request's values are not kept in the pool, on any path: a descriptor
		// abandoned half-built leaves values past the slices' lengths.
		clear(sc.entries[:cap(sc.entries)])
		clear(sc.descs[:cap(sc.descs)])
		m.pool.Put(sc)
	}()
	sc.descs, sc.entries = sc.descs[:0], sc.entries[:0]
	for _, tmpl := range m.s.descs {
		first := len(sc.entries)
		for _, e := range tmpl {
			v, ok := e.value(&q)
			if !ok {
				sc.entries = sc.entries[:first]
				break
			}
			sc.entries = append(sc.entries, halt.Entry{Key: e.key, Value: v})
		}
		if len(sc.entries) > first {
			sc.descs = append(sc.descs, sc.entries[first:len(sc.entries):len(sc.entries)])
		}
	}
	if len(sc.descs) == 0 {
		next.ServeHTTP(w, r) // nothing to count: Envoy would send no call
		return
	}
	var n int64 = 1
	if m.s.cost != nil {
		if n = m.s.cost(r); n < 0 {
			m.fail(w, r, http.StatusInternalServerError, fmt.Errorf("%w: negative cost %d", halt.ErrInvalid, n))
			return
		}
	}
	// An Idempotency-Key makes the request decided once (the rules' idempotency_ttl), as
	// ext_authz reads it: several fields are one value, joined as Envoy joins them.
	key := idempotencyKey(r.Header)
	if p, bad := headers.BadIdempotencyKey(key); bad {
		writeProblem(w, p.Status, p.Body())
		return
	}
	scope := ""
	// The body is read (up to MaxIdempotencyBody) only where a rule keeps the key: the
	// scope tells this request from another sent with it. Elsewhere the key is ignored,
	// and so is the body, which the handler streams as it comes.
	if key != "" && m.h.KeepsIdempotencyKeys(m.s.domain, sc.descs...) {
		body, err := peekBody(r)
		if err != nil {
			m.fail(w, r, http.StatusBadRequest, fmt.Errorf("reading the body of a request with an Idempotency-Key: %w", err))
			return
		}
		scope = halt.IdempotencyScope(strings.ToUpper(r.Method), requestTarget(r), body)
	}
	ctx := r.Context()
	d, err := m.h.CheckIdempotentRequest(ctx, m.h.Now(), m.s.domain, key, scope, uint64(n), sc.descs...)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return // the client went away
	case errors.Is(err, halt.ErrStoreUnavailable):
		m.fail(w, r, http.StatusServiceUnavailable, err)
		return
	case errors.Is(err, halt.ErrInvalid):
		// A value the engine refuses (longer than halt.MaxKeyLen): letting it through
		// would let anyone out of the limits with a long header.
		m.fail(w, r, http.StatusBadRequest, err)
		return
	default:
		m.fail(w, r, http.StatusServiceUnavailable, err)
		return
	}
	d.WriteHeaders(w.Header(), m.s.headers)
	if !d.Allowed {
		status, body := d.Problem()
		writeProblem(w, status, body)
		return
	}
	if d.Delay > 0 && !hold(ctx, d.Delay) {
		return // the client went away while its request was being shaped
	}
	next.ServeHTTP(w, r)
}

// idempotencyKey is the request's Idempotency-Key ("" for none). Envoy hands ext_authz
// a header sent several times as one value joined with commas; so does this.
func idempotencyKey(h http.Header) string {
	vs := h[idempotencyHeader]
	switch len(vs) {
	case 0:
		return ""
	case 1:
		return vs[0]
	}
	return strings.Join(vs, ",")
}

// MaxIdempotencyBody bounds how much of the body of a request with an Idempotency-Key
// the middleware reads to tell the request apart from another sent with the same key:
// past it only the first MaxIdempotencyBody bytes count, as Envoy's ext_authz
// with_request_body sends at most max_request_bytes.
const MaxIdempotencyBody = 1 << 20

// peekBody reads up to MaxIdempotencyBody bytes of r's body (nil for none) and puts them
// back in front of the rest, so the handler reads the body whole.
func peekBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxIdempotencyBody))
	if err != nil {
		return nil, err
	}
	r.Body = readCloser{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
	if len(b) == 0 {
		return nil, nil
	}
	return b, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// requestTarget is r's target as received (its path with query), as Envoy hands
// ext_authz its :path.
func requestTarget(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// idempotencyHeader is the canonical form of headers.IdempotencyKeyHeader (already so).
const idempotencyHeader = headers.IdempotencyKeyHeader

// fail answers a request the engine could not decide.
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	if ok, held := m.failLog.Allow(time.Now()); ok {
		m.s.log.Warn("rate limiter could not decide a request", "status", status, "path", rawPath(r), "err", err, "similar_suppressed", held)
	}
	p := headers.Unavailable()
	switch status {
	case http.StatusBadRequest:
		p = headers.Problem{Status: status, Title: "Bad Request", Detail: "the request cannot be rate-limited: " + trimErr(err)}
	case http.StatusInternalServerError:
		p = headers.Problem{Status: status, Title: "Internal Server Error", Detail: "the rate limiter is misconfigured"}
	}
	if ra, ok := p.RetryAfter(); ok {
		w.Header().Set("Retry-After", ra)
	}
	writeProblem(w, p.Status, p.Body())
}

// trimErr is err's message without the package prefixes a client has no use for.
func trimErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

func writeProblem(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", halt.ProblemContentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// hold waits d (leaky-bucket shaping) and reports whether the request is still wanted.
func hold(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// rawPath is the request's path as received, without its query: what ext_authz judges
// exemptions on. A request made in-process (no request line) gives its escaped path.
func rawPath(r *http.Request) string {
	if u := r.RequestURI; u != "" && u[0] == '/' {
		if i := strings.IndexAny(u, "?#"); i >= 0 {
			u = u[:i]
		}
		return u
	}
	return r.URL.EscapedPath()
}

// ClientAddr returns the client's address: the connection's peer, or, when the peer is
// one of the trusted proxies, the first X-Forwarded-For hop from the right that is not
// itself trusted. An unparsable hop stops the walk at the last address known good. It
// returns the zero Addr when not even the peer parses (a unit test's RemoteAddr).
func ClientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	a := parseAddr(r.RemoteAddr)
	if !a.IsValid() || len(trusted) == 0 || !in(a, trusted) {
		return a
	}
	hops := r.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			h := parseAddr(strings.TrimSpace(parts[j]))
			if !h.IsValid() {
				return a
			}
			a = h
			if !in(a, trusted) {
				return a
			}
		}
	}
	return a
}

func parseAddr(s string) netip.Addr {
	if len(s) > 64 {
		return netip.Addr{} // no address is that long
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().WithZone("").Unmap()
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.WithZone("").Unmap()
}

func in(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
