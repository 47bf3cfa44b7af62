// Package admin is halt-envoy's operator API: JSON over HTTP, under /admin/, to read and
// reset a customer's rate-limit counters and calendar quotas and to read and lift a
// penalty lockout, without touching the store by hand. It addresses counters the way Envoy does, by domain and
// descriptor, matches them with the engine's configuration and reads and resets them
// through the engine (its keys, its reading of results), so what it reads is exactly
// what the next request will be decided against.
//
//	GET    /admin/v1/limits?domain=D&descriptor=k=v,k=v          every rate limit's state
//	DELETE /admin/v1/limits?domain=D&descriptor=...              reset them (full limits)
//	GET    /admin/v1/quotas?domain=D&descriptor=k=v,k=v          usage of every quota
//	DELETE /admin/v1/quotas?domain=D&descriptor=...[&quota=NAME]  reset them (or one)
//	GET    /admin/v1/penalty?domain=D&descriptor=...             lockout state (remote_address=A: also invalid_key_penalty's)
//	DELETE /admin/v1/penalty?domain=D&descriptor=...             lift it
//	GET    /admin/v1/abuse?domain=D&descriptor=remote_address=A  abuse lockout and why
//	DELETE /admin/v1/abuse?domain=D&descriptor=...               lift it
//
// Every call needs "Authorization: Bearer TOKEN". Without a configured token the API is
// off: it answers 404, as if it did not exist.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/observe"
)

// Prefix is where the API is mounted.
const Prefix = "/admin/"

// Bounds on one call's descriptor: the engine's own, so the API accepts exactly the
// descriptors a request could carry.
const (
	MaxEntries = engine.DefaultMaxEntries
	MaxLen     = engine.DefaultMaxValueLen
)

// Config wires a Handler.
type Config struct {
	// Engine holds the state the API reads and resets, and the configuration it is
	// matched against; its clock places quota periods and lockouts.
	Engine *engine.Engine
	// Token is the bearer token callers must present. Empty disables the API.
	Token string
	// Now is the clock of the brute-force back-off; it defaults to time.Now.
	Now func() time.Time
	// Logger receives one line per call; defaults to discarding.
	Logger *slog.Logger
	// StoreTimeout bounds a store round; zero means 2 s (an operator can wait longer
	// than Envoy).
	StoreTimeout time.Duration
	// Abuse, when set, serves /admin/v1/abuse: ext_authz's abuse lockouts and why.
	Abuse *Abuse
}

// Handler serves the admin API. It is safe for concurrent use.
type Handler struct {
	cfg   Config
	token [sha256.Size]byte // hashed so the comparison is constant-time whatever the lengths
	mux   *http.ServeMux
	guard *guard
	// refusedLog and lockoutLog keep the lines a token guesser makes per call to one per
	// lograte.DefaultInterval each, with the count held back.
	refusedLog, lockoutLog *lograte.Limiter
}

// New returns the API. With no token it logs that the API is disabled and answers 404.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 2 * time.Second
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), guard: newGuard(),
		refusedLog: lograte.New(lograte.DefaultInterval), lockoutLog: lograte.New(lograte.DefaultInterval)}
	if cfg.Token == "" {
		cfg.Logger.Info("admin API disabled: no admin token configured (--admin-token, HALT_ADMIN_TOKEN or --admin-token-file)")
	} else {
		h.token = sha256.Sum256([]byte(cfg.Token))
		// Nothing derived from the token is logged: even a hash prefix narrows a guess
		// of a weak token, and tells a reader of the log which token is in force.
		cfg.Logger.Info("admin API enabled", "path", Prefix+"v1/")
	}
	h.mux.HandleFunc("GET /admin/v1/quotas", h.getQuotas)
	h.mux.HandleFunc("DELETE /admin/v1/quotas", h.deleteQuotas)
	h.mux.HandleFunc("GET /admin/v1/limits", h.getLimits)
	h.mux.HandleFunc("DELETE /admin/v1/limits", h.deleteLimits)
	h.mux.HandleFunc("GET /admin/v1/penalty", h.getPenalty)
	h.mux.HandleFunc("DELETE /admin/v1/penalty", h.deletePenalty)
	h.mux.HandleFunc("GET /admin/v1/abuse", h.getAbuse)
	h.mux.HandleFunc("DELETE /admin/v1/abuse", h.deleteAbuse)
	return h
}

// Enabled reports whether a token is configured.
func (h *Handler) Enabled() bool { return h.cfg.Token != "" }

// Register mounts the API on m under Prefix (server.Options.Admin takes this method).
func (h *Handler) Register(m *http.ServeMux) { m.Handle(Prefix, h) }

// ShortHash is the first 8 hex characters of s's SHA-256: enough to correlate log lines
// about one identity or token, useless for recovering it.
func ShortHash(s string) string { return observe.ShortHash(s) }

// ServeHTTP authenticates, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.Enabled() {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	if !h.authenticate(w, r) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(&jsonErrors{ResponseWriter: w}, r)
}

// Protect returns next behind the admin token and its brute-force back-off: the
// profiler on the HTTP port, when there is no separate admin port, takes this. Without a
// token next is never reached (404).
func (h *Handler) Protect(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.Enabled() {
			writeError(w, http.StatusNotFound, "not found")
			return
		}
		if h.authenticate(w, r) {
			w.Header().Set("Cache-Control", "no-store")
			next.ServeHTTP(w, r)
		}
	})
}

// authenticate checks r's bearer token under the brute-force back-off, answering r
// itself (401 or 429) when it fails.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) bool {
	now := h.cfg.Now()
	addr := addrKey(r.RemoteAddr)
	// A locked-out address is refused before its token is compared: the answer is the
	// same whether the guess was right or wrong.
	if d := h.guard.locked(addr, now); d > 0 {
		secs := headers.Seconds(d.Microseconds())
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many refused calls from this address: retry in %d s", secs))
		return false
	}
	if !h.authorized(r) {
		lockout := h.guard.fail(addr, now)
		if ok, held := h.refusedLog.Allow(now); ok {
			h.cfg.Logger.Warn("admin call refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", http.StatusUnauthorized, "similar_suppressed", held)
		}
		if lockout > 0 {
			if ok, held := h.lockoutLog.Allow(now); ok {
				h.cfg.Logger.Warn("admin API: address locked out after refused calls", "address", addr, "for", lockout, "similar_suppressed", held)
			}
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="halt-admin"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
		return false
	}
	h.guard.success(addr)
	return true
}

// jsonErrors turns the mux's own plain-text 404 and 405 answers into JSON errors, so a
// client always gets one body shape.
type jsonErrors struct {
	http.ResponseWriter
	plain bool
}

func (j *jsonErrors) WriteHeader(code int) {
	if (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) && strings.HasPrefix(j.Header().Get("Content-Type"), "text/plain") {
		j.plain = true
		j.Header().Set("Content-Type", "application/json")
		j.ResponseWriter.WriteHeader(code)
		msg := "no such admin endpoint (want /admin/v1/quotas or /admin/v1/penalty)"
		if code == http.StatusMethodNotAllowed {
			msg = "method not allowed (want GET or DELETE)"
		}
		_ = json.NewEncoder(j.ResponseWriter).Encode(errorBody{Error: msg})
		return
	}
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.plain {
		return len(b), nil // the mux's text body; the JSON one is already written
	}
	return j.ResponseWriter.Write(b)
}

func (h *Handler) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// target is a parsed, matched query.
type target struct {
	domain  string
	entries []config.Entry
	rule    *config.Rule
	// pol is the penalty the target's lockout is read under: its rule's (penalty), the
	// abuse detectors' (abuse, where rule is nil).
	pol  *config.PenaltyPolicy
	hash string // ShortHash of the descriptor, for logs and answers
}

// badRequest is a problem with the caller's query: answered 400 with its message.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// ParseDescriptor parses "k=v,k=v" into entries. A value may hold '=' (the first one
// splits); a ',' or '\' inside a key or value is written "\," or "\\".
func ParseDescriptor(s string) ([]config.Entry, error) {
	if s == "" {
		return nil, bad("descriptor is missing: want descriptor=key=value,key=value")
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == ',' || s[i+1] == '\\'):
			cur.WriteByte(s[i+1])
			i++
		case c == ',':
			parts = append(parts, cur.String())
			cur.Reset()
			if len(parts) > MaxEntries {
				return nil, bad("descriptor has more than %d entries", MaxEntries)
			}
		default:
			cur.WriteByte(c)
		}
	}
	parts = append(parts, cur.String())
	if len(parts) > MaxEntries {
		return nil, bad("descriptor has %d entries, the limit is %d", len(parts), MaxEntries)
	}
	entries := make([]config.Entry, 0, len(parts))
	for i, p := range parts {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, bad("descriptor entry %d is not key=value", i+1)
		}
		if len(k) > MaxLen {
			return nil, bad("descriptor entry %d: key is %d bytes, the limit is %d", i+1, len(k), MaxLen)
		}
		if len(v) > MaxLen {
			return nil, bad("descriptor entry %d (%s): value is %d bytes, the limit is %d", i+1, truncate(k), len(v), MaxLen)
		}
		entries = append(entries, config.Entry{Key: k, Value: v})
	}
	return entries, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// repeated refuses a query giving one of the admin API's parameters twice: reading or
// resetting only the first of two descriptors, and answering as if both were done,
// would mislead the operator.
func repeated(q url.Values) error {
	for _, name := range []string{"domain", "descriptor", "quota"} {
		if n := len(q[name]); n > 1 {
			return bad("%s is given %d times; a request reads or resets one descriptor", name, n)
		}
	}
	return nil
}

// parseTarget reads the query's domain and descriptor, bounded and unrepeated: what
// every endpoint's target starts from.
func parseTarget(r *http.Request) (*target, error) {
	q := r.URL.Query()
	t := &target{domain: q.Get("domain")}
	desc := q.Get("descriptor")
	t.hash = ShortHash(desc)
	if err := repeated(q); err != nil {
		return t, err
	}
	if t.domain == "" {
		return t, bad("domain is missing")
	}
	if len(t.domain) > MaxLen {
		return t, bad("domain is %d bytes, the limit is %d", len(t.domain), MaxLen)
	}
	var err error
	if t.entries, err = ParseDescriptor(desc); err != nil {
		return t, err
	}
	return t, nil
}

// resolve parses the query and matches it like the engine would.
func (h *Handler) resolve(r *http.Request) (*target, error) {
	t, err := parseTarget(r)
	if err != nil {
		return t, err
	}
	// The canonical form's hash: the one the log and trace observers print.
	t.hash = observe.IdentityHash(t.entries)
	set := h.cfg.Engine.Rules()
	if set == nil {
		return t, errors.New("no configuration loaded")
	}
	if !set.HasDomain(t.domain) {
		return t, bad("unknown domain %q (have: %s)", truncate(t.domain), strings.Join(set.Domains(), ", "))
	}
	if reason, ok := set.Exempt(t.domain, t.entries); ok {
		return t, bad("descriptor is exempt (%s): it has no counters", reason)
	}
	rule, ok := set.Match(t.domain, t.entries)
	if !ok {
		return t, bad("no rule of domain %q matches the descriptor", t.domain)
	}
	t.rule = rule
	return t, nil
}

// bound bounds one call's store round by StoreTimeout.
func (h *Handler) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.cfg.StoreTimeout)
}

// finish answers a failed call and logs it; a nil err logs success.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, t *target, code int, result string, err error) {
	// The domain is bounded only when it is a configured one: cut what a caller made up.
	attrs := []any{"method", r.Method, "path", r.URL.Path, "domain", truncate(t.domain), "identity", t.hash}
	if t.rule != nil {
		attrs = append(attrs, "rule", t.rule.Name)
	}
	var br *badRequest
	switch {
	case err == nil:
		h.cfg.Logger.Info("admin call", append(attrs, "status", code, "result", result)...)
		return
	case errors.As(err, &br):
		code = http.StatusBadRequest
	default:
		code = http.StatusServiceUnavailable
	}
	h.cfg.Logger.Warn("admin call failed", append(attrs, "status", code, "err", err)...)
	msg := err.Error()
	if code == http.StatusServiceUnavailable {
		msg = "store: " + msg
	}
	writeError(w, code, msg)
}

// QuotaUsage is one quota's state in an answer: the quota as /config and `halt-envoy
// check` show it (name, period, requests, time zone), and its usage now.
type QuotaUsage struct {
	config.QuotaView
	Used      int64 `json:"used"`
	Limit     int64 `json:"limit"`
	Remaining int64 `json:"remaining"`
	// Debt is how far beyond the quota a drained or reported charge took the identity.
	Debt int64 `json:"debt"`
	// PeriodStart and PeriodEnd are RFC 3339 in the quota's time zone.
	PeriodStart    string `json:"period_start"`
	PeriodEnd      string `json:"period_end"`
	ResetIn        string `json:"reset_in"`
	ResetInSeconds int64  `json:"reset_in_seconds"`
}

// QuotasAnswer is the body of GET and DELETE /admin/v1/quotas.
type QuotasAnswer struct {
	Domain string `json:"domain"`
	Rule   string `json:"rule"`
	Plan   string `json:"plan,omitempty"`
	// Identity is the descriptor's short hash (observe.IdentityHash), the same the log and
	// trace observers print: the raw value is never echoed into logs.
	Identity string       `json:"identity"`
	Quotas   []QuotaUsage `json:"quotas,omitempty"`
	Reset    []string     `json:"reset,omitempty"`
}

func (h *Handler) getQuotas(w http.ResponseWriter, r *http.Request) {
	t, err := h.resolve(r)
	if err == nil && len(t.rule.Quotas) == 0 {
		err = bad("rule %q has no quotas", t.rule.Name)
	}
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ctx, cancel := h.bound(r.Context())
	defer cancel()
	usage, err := h.cfg.Engine.Quotas(ctx, t.domain, t.entries, t.rule)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ans := QuotasAnswer{Domain: t.domain, Rule: t.rule.Name, Plan: t.rule.Plan, Identity: t.hash}
	for _, u := range usage {
		ans.Quotas = append(ans.Quotas, QuotaUsage{
			QuotaView:      u.Quota.View(),
			Used:           u.Used,
			Limit:          u.Limit.Params.Requests,
			Remaining:      u.Remaining,
			Debt:           u.Debt,
			PeriodStart:    u.Start.In(u.Quota.Location).Format(time.RFC3339),
			PeriodEnd:      u.End.In(u.Quota.Location).Format(time.RFC3339),
			ResetIn:        u.ResetAfter.Round(time.Second).String(),
			ResetInSeconds: headers.Seconds(u.ResetAfter.Microseconds()),
		})
	}
	h.finish(w, r, t, http.StatusOK, "read", nil)
	writeJSON(w, http.StatusOK, ans)
}

func (h *Handler) deleteQuotas(w http.ResponseWriter, r *http.Request) {
	t, err := h.resolve(r)
	if err == nil && len(t.rule.Quotas) == 0 {
		err = bad("rule %q has no quotas", t.rule.Name)
	}
	var qs []*config.Quota
	var names []string
	if err == nil {
		only := r.URL.Query().Get("quota")
		for i := range t.rule.Quotas {
			q := &t.rule.Quotas[i]
			names = append(names, q.Name)
			if only == "" || only == q.Name {
				qs = append(qs, q)
			}
		}
		if len(qs) == 0 {
			err = bad("rule %q has no quota %q (have: %s)", t.rule.Name, truncate(only), strings.Join(names, ", "))
		} else if only != "" {
			names = []string{only}
		}
	}
	if err == nil {
		ctx, cancel := h.bound(r.Context())
		err = h.cfg.Engine.ResetQuotas(ctx, t.domain, t.entries, t.rule, qs...)
		cancel()
	}
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	h.finish(w, r, t, http.StatusOK, "reset "+strings.Join(names, ","), nil)
	writeJSON(w, http.StatusOK, QuotasAnswer{Domain: t.domain, Rule: t.rule.Name, Plan: t.rule.Plan, Identity: t.hash, Reset: names})
}

// LimitState is one rate limit's state in an answer: the limit as /config and `halt-envoy
// check` show it, and where the identity stands against it now.
type LimitState struct {
	config.LimitView
	// Allowed reports whether a request of one hit would pass now.
	Allowed   bool  `json:"allowed"`
	Remaining int64 `json:"remaining"`
	// Debt is how far below zero the counter is (over_charge: drain with max_debt, or a
	// report-only charge): requests wait until it is repaid.
	Debt           int64  `json:"debt"`
	ResetIn        string `json:"reset_in"`
	ResetInSeconds int64  `json:"reset_in_seconds"`
	// RetryIn is how long a request of one hit waits now: empty when Allowed, "never"
	// when one hit can never pass (a limit of 0).
	RetryIn        string `json:"retry_in,omitempty"`
	RetryInSeconds int64  `json:"retry_in_seconds"`
}

// LimitsAnswer is the body of GET and DELETE /admin/v1/limits.
type LimitsAnswer struct {
	Domain string `json:"domain"`
	Rule   string `json:"rule"`
	Plan   string `json:"plan,omitempty"`
	// Identity is the descriptor's short hash, as in QuotasAnswer.
	Identity string       `json:"identity"`
	Limits   []LimitState `json:"limits,omitempty"`
	Reset    bool         `json:"reset,omitempty"`
}

func (h *Handler) limitsTarget(r *http.Request) (*target, error) {
	t, err := h.resolve(r)
	if err == nil && (t.rule.Unlimited || len(t.rule.Limits) == 0) {
		err = bad("rule %q has no rate limits", t.rule.Name)
	}
	return t, err
}

func (h *Handler) getLimits(w http.ResponseWriter, r *http.Request) {
	t, err := h.limitsTarget(r)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ctx, cancel := h.bound(r.Context())
	defer cancel()
	states, err := h.cfg.Engine.Limits(ctx, t.domain, t.entries, t.rule)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ans := LimitsAnswer{Domain: t.domain, Rule: t.rule.Name, Plan: t.rule.Plan, Identity: t.hash}
	result := "within"
	for _, s := range states {
		ls := LimitState{
			LimitView:      s.Limit.View(),
			Allowed:        s.Allowed,
			Remaining:      s.Remaining,
			Debt:           s.Debt,
			ResetIn:        s.ResetAfter.Round(time.Second).String(),
			ResetInSeconds: headers.Seconds(s.ResetAfter.Microseconds()),
		}
		switch {
		case s.RetryAfter < 0:
			ls.RetryIn = "never"
		case !s.Allowed:
			ls.RetryIn = s.RetryAfter.String()
			ls.RetryInSeconds = headers.Seconds(s.RetryAfter.Microseconds())
		}
		if !s.Allowed {
			result = "over"
		}
		ans.Limits = append(ans.Limits, ls)
	}
	h.finish(w, r, t, http.StatusOK, result, nil)
	writeJSON(w, http.StatusOK, ans)
}

func (h *Handler) deleteLimits(w http.ResponseWriter, r *http.Request) {
	t, err := h.limitsTarget(r)
	if err == nil {
		ctx, cancel := h.bound(r.Context())
		err = h.cfg.Engine.ResetLimits(ctx, t.domain, t.entries, t.rule)
		cancel()
	}
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	h.finish(w, r, t, http.StatusOK, "reset", nil)
	writeJSON(w, http.StatusOK, LimitsAnswer{Domain: t.domain, Rule: t.rule.Name, Plan: t.rule.Plan, Identity: t.hash, Reset: true})
}

// PenaltyAnswer is the body of GET and DELETE /admin/v1/penalty. The penalty algorithm's
// result does not carry the ladder level, so the answer has none; PenaltyPolicy shows the
// ladder the next lockouts will climb.
type PenaltyAnswer struct {
	Domain   string `json:"domain"`
	Rule     string `json:"rule"`
	Identity string `json:"identity"`
	Penalty  string `json:"penalty"`
	// PenaltyPolicy is the policy as /config and `halt-envoy check` show it.
	PenaltyPolicy *config.PenaltyView `json:"penalty_policy,omitempty"`
	Locked        bool                `json:"locked"`
	// LockedUntil is RFC 3339 (UTC), empty when not locked.
	LockedUntil             string `json:"locked_until,omitempty"`
	RemainingLockout        string `json:"remaining_lockout,omitempty"`
	RemainingLockoutSeconds int64  `json:"remaining_lockout_seconds"`
	// PointsLeft is the violation points that would start the next lockout.
	PointsLeft int64 `json:"points_left"`
	Threshold  int64 `json:"threshold"`
	Lifted     bool  `json:"lifted,omitempty"`
}

// penaltyTarget is the lockout a /penalty query names: a descriptor's under its rule's
// penalty, or, for the one entry remote_address=ADDR while the authz file sets
// invalid_key_penalty (in the authz file's domain), that lockout of the address's network (any address of it, as
// /abuse reads one) unless a rule of the rate-limit config gives the descriptor another
// penalty of its own (Envoy's exact remote_address, counted as sent).
func (h *Handler) penaltyTarget(r *http.Request) (*target, error) {
	if name, domain := h.invalidKeyPenalty(); name != "" {
		t, err := parseTarget(r)
		if err != nil {
			return t, err
		}
		if t.domain == domain && len(t.entries) == 1 && t.entries[0].Key == abuse.AddressKey {
			set := h.cfg.Engine.Rules()
			if set == nil {
				return t, errors.New("no configuration loaded")
			}
			if rule, ok := set.Match(t.domain, t.entries); !ok || rule.Penalty == nil || rule.Penalty.Name == name {
				return h.identityTarget(t, name, "invalid_key_penalty")
			}
		}
	}
	t, err := h.resolve(r)
	if err == nil && t.rule.Penalty == nil {
		err = bad("rule %q has no penalty", t.rule.Name)
	}
	if err == nil {
		t.pol = t.rule.Penalty
	}
	return t, err
}

func (h *Handler) getPenalty(w http.ResponseWriter, r *http.Request) {
	h.readPenalty(w, r, h.penaltyTarget, nil)
}

func (h *Handler) deletePenalty(w http.ResponseWriter, r *http.Request) {
	h.liftPenalty(w, r, h.penaltyTarget, nil)
}

// penaltyAnswer is the answer about t's standing under t.pol, before the store is read.
func (t *target) penaltyAnswer() PenaltyAnswer {
	pv := t.pol.View()
	a := PenaltyAnswer{Domain: t.domain, Identity: t.hash, Penalty: t.pol.Name, PenaltyPolicy: &pv}
	if t.rule != nil {
		a.Rule = t.rule.Name
	}
	return a
}

// readPenalty answers GET of a lockout (/penalty, /abuse): the target of the request
// (resolve), its standing under the target's penalty, and that answer as wrap makes it
// (nil: the PenaltyAnswer itself).
func (h *Handler) readPenalty(w http.ResponseWriter, r *http.Request, resolve func(*http.Request) (*target, error), wrap func(*target, PenaltyAnswer) any) {
	t, err := resolve(r)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ctx, cancel := h.bound(r.Context())
	defer cancel()
	// Severity 0: a read that records nothing.
	st, err := h.cfg.Engine.Penalty(ctx, t.domain, t.entries, t.rule, t.pol, 0)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ans := t.penaltyAnswer()
	ans.Locked, ans.PointsLeft, ans.Threshold = st.Locked, st.PointsLeft, st.Threshold
	result := "not locked"
	if st.Locked {
		ans.LockedUntil = st.Until.Format(time.RFC3339)
		ans.RemainingLockout = st.Remaining.Round(time.Second).String()
		ans.RemainingLockoutSeconds = headers.Seconds(st.Remaining.Microseconds())
		result = "locked"
	}
	h.finish(w, r, t, http.StatusOK, result, nil)
	writeJSON(w, http.StatusOK, answer(t, ans, wrap))
}

// liftPenalty answers DELETE of a lockout (/penalty, /abuse), as readPenalty reads one.
func (h *Handler) liftPenalty(w http.ResponseWriter, r *http.Request, resolve func(*http.Request) (*target, error), wrap func(*target, PenaltyAnswer) any) {
	t, err := resolve(r)
	if err == nil {
		ctx, cancel := h.bound(r.Context())
		err = h.cfg.Engine.LiftPenalty(ctx, t.domain, t.entries, t.rule, t.pol)
		cancel()
	}
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	h.finish(w, r, t, http.StatusOK, "lifted", nil)
	ans := t.penaltyAnswer()
	ans.Lifted, ans.Threshold, ans.PointsLeft = true, t.pol.Params.Requests, t.pol.Params.Requests
	writeJSON(w, http.StatusOK, answer(t, ans, wrap))
}

func answer(t *target, ans PenaltyAnswer, wrap func(*target, PenaltyAnswer) any) any {
	if wrap == nil {
		return ans
	}
	return wrap(t, ans)
}
