// Package middleware rate-limits a net/http server with a halt.Limiter: the protection
// halt-envoy gives services behind Envoy, for a Go service that has no Envoy in front.
//
// It answers like the server does: the same RateLimit / RateLimit-Policy (IETF draft)
// and X-RateLimit-* headers, 429 with Retry-After on denial, and the same exemption
// semantics (health paths, private address ranges, CIDR lists) as a domain's exemptions:
// block.
//
//	lim, _ := halt.NewLimiter(store, halt.Policy{Requests: 100, Per: time.Minute})
//	http.ListenAndServe(":8080", middleware.New(lim, middleware.ExemptPaths("/healthz"))(mux))
package middleware

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	hconfig "github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

// Headers selects the rate-limit response header families (IETF: RateLimit and
// RateLimit-Policy; XRateLimit: X-RateLimit-*), as the server's --headers flag does. It is
// the server's own type, so both render the same fields.
type Headers = headers.Families

// FailureMode is what happens to a request when the store cannot answer. It is the
// server's own type (failure_mode in the configuration), so both name the modes alike.
type FailureMode = hconfig.FailureMode

// The failure modes. FailOpen is the default, as in the server: a rate limiter that
// takes the site down with its store protects nothing.
const (
	// FailOpen lets the request through (and logs the store failure): the server's
	// failure_mode allow.
	FailOpen = hconfig.FailAllow
	// FailClosed answers 503 with a problem body: the server's failure_mode deny.
	FailClosed = hconfig.FailDeny
)

// Option configures the middleware.
type Option func(*config)

type config struct {
	key      func(*http.Request) string
	cost     func(*http.Request) int64
	trusted  []netip.Prefix
	paths    map[string]struct{}
	prefixes []string
	private  bool
	cidrs    []netip.Prefix
	headers  Headers
	failure  FailureMode
	// failLog keeps store-failure warnings to one per lograte.DefaultInterval.
	failLog *lograte.Limiter
	log     *slog.Logger
}

// WithKey replaces the default key (the client address, "ip:203.0.113.7"): an API key,
// a user id from the session, a tenant. An empty key lets the request through unlimited,
// so a key function can also decide that some requests are not limited at all.
func WithKey(f func(*http.Request) string) Option { return func(c *config) { c.key = f } }

// WithCost makes some requests cost more than one (weighted endpoints: a bulk export may
// cost 10 ordinary calls). A cost of 0 checks without counting.
func WithCost(f func(*http.Request) int64) Option { return func(c *config) { c.cost = f } }

// TrustProxies makes the client address come from X-Forwarded-For when the request
// arrives from one of these proxies: the header is read from the right, skipping trusted
// hops, so a client cannot pick its own address by sending the header itself.
func TrustProxies(proxies ...netip.Prefix) Option {
	return func(c *config) { c.trusted = append(c.trusted, proxies...) }
}

// ExemptPaths lets requests for these paths through uncounted (health checks, metrics
// scrapes). A path ending in "*" is a prefix; the query string is ignored. These are
// the semantics of the server's exemptions: paths.
func ExemptPaths(paths ...string) Option {
	return func(c *config) {
		if c.paths == nil {
			c.paths = make(map[string]struct{})
		}
		for _, p := range paths {
			if pre, ok := strings.CutSuffix(p, "*"); ok {
				c.prefixes = append(c.prefixes, pre)
			} else {
				c.paths[p] = struct{}{}
			}
		}
	}
}

// ExemptPrivate lets clients from private, loopback and link-local ranges through
// uncounted (the server's private_ranges: true): internal callers are not customers.
func ExemptPrivate() Option { return func(c *config) { c.private = true } }

// ExemptCIDRs lets clients from these ranges through uncounted (partners, monitoring).
func ExemptCIDRs(prefixes ...netip.Prefix) Option {
	return func(c *config) { c.cidrs = append(c.cidrs, prefixes...) }
}

// WithHeaders selects the header families; both are on by default.
func WithHeaders(h Headers) Option { return func(c *config) { c.headers = h } }

// WithFailureMode chooses between FailOpen (the default, also the zero FailureMode) and
// FailClosed. Any other mode refuses like FailClosed: without an Envoy to hand the
// decision to (the server's failure_mode error), refusing is the side that keeps the
// door shut.
func WithFailureMode(m FailureMode) Option { return func(c *config) { c.failure = m } }

// WithLogger receives store failures; the default discards them.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// New returns middleware that limits every request with lim.
func New(lim *halt.Limiter, opts ...Option) func(http.Handler) http.Handler {
	c := &config{headers: Headers{IETF: true, XRateLimit: true}, failLog: lograte.New(lograte.DefaultInterval)}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.failure == "" {
		c.failure = FailOpen
	}
	if c.key == nil {
		c.key = func(r *http.Request) string {
			a := ClientAddr(r, c.trusted)
			if !a.IsValid() {
				return ""
			}
			return "ip:" + a.String()
		}
	}
	p := lim.Policy()
	name, window := p.Name, p.Per
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c.exempt(r) {
				next.ServeHTTP(w, r)
				return
			}
			key := c.key(r)
			if key == "" {
				next.ServeHTTP(w, r)
				return
			}
			var n int64 = 1
			if c.cost != nil {
				n = c.cost(r)
			}
			d, err := lim.AllowN(r.Context(), key, n)
			if err != nil {
				if ok, held := c.failLog.Allow(time.Now()); ok {
					c.log.Warn("rate-limit store failed", "mode", string(c.failure), "err", err, "similar_suppressed", held)
				}
				if c.failure != FailOpen {
					w.Header().Set("Retry-After", "1")
					problem(w, http.StatusServiceUnavailable, "Rate limiter unavailable", "the rate limiter cannot decide right now; retry shortly")
					return
				}
				next.ServeHTTP(w, r)
				return
			}
			c.setHeaders(w.Header(), name, window, &d)
			if !d.Allowed {
				var detail string
				var secs int64
				if d.RetryAfter < 0 {
					// It can never pass; Retry-After still tells a client when to look again.
					secs = max(headers.Seconds(d.ResetAfter.Microseconds()), 1)
					detail = "this request costs more than the limit allows at once"
				} else {
					secs = max(headers.Seconds(d.RetryAfter.Microseconds()), 1)
					detail = "rate limit exceeded; retry in " + strconv.FormatInt(secs, 10) + " s"
				}
				w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
				problem(w, http.StatusTooManyRequests, "Too Many Requests", detail)
				return
			}
			if d.Delay > 0 && !hold(r.Context(), d.Delay) {
				return // the client went away while its request was being shaped
			}
			next.ServeHTTP(w, r)
		})
	}
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

func (c *config) exempt(r *http.Request) bool {
	if len(c.paths) > 0 || len(c.prefixes) > 0 {
		p := r.URL.Path
		if _, ok := c.paths[p]; ok {
			return true
		}
		for _, pre := range c.prefixes {
			if strings.HasPrefix(p, pre) {
				return true
			}
		}
	}
	if !c.private && len(c.cidrs) == 0 {
		return false
	}
	a := ClientAddr(r, c.trusted)
	if !a.IsValid() {
		return false
	}
	if c.private && IsPrivate(a) {
		return true
	}
	for _, p := range c.cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (c *config) setHeaders(h http.Header, name string, window time.Duration, d *halt.Decision) {
	// algorithms.Result.Wait's rule, the server's: until the same request can pass when
	// it cannot now, else until the limit is whole again.
	reset := d.ResetAfter
	if d.RetryAfter > 0 {
		reset = d.RetryAfter
	}
	v := headers.Values{Policy: name, Limit: d.Limit, Remaining: d.Remaining, ResetUS: reset.Microseconds(), WindowUS: window.Microseconds()}
	c.headers.Render(&v, h.Set)
}

// problem writes an RFC 9457 problem body.
func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
		Status int    `json:"status"`
	}{"about:blank", title, detail, status})
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

// IsPrivate reports whether a is in a private, loopback or link-local range: the ranges
// of the server's private_ranges exemption (10/8, 172.16/12, 192.168/16, 127/8,
// 169.254/16, ::1, fc00::/7, fe80::/10). pkg/plans keeps its check unexported, so this
// is a deliberate duplicate.
func IsPrivate(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return b[0] == 10 || b[0] == 127 ||
			(b[0] == 172 && b[1]&0xf0 == 16) ||
			(b[0] == 192 && b[1] == 168) ||
			(b[0] == 169 && b[1] == 254)
	}
	if !a.Is6() {
		return false
	}
	if a == netip.IPv6Loopback() {
		return true
	}
	b := a.As16()
	return b[0]&0xfe == 0xfc || (b[0] == 0xfe && b[1]&0xc0 == 0x80)
}
