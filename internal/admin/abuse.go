package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/observe"
)

// Abuse is what /admin/v1/abuse reads: the penalty ext_authz's abuse detectors feed
// and the record of their detections.
type Abuse struct {
	// Penalty names the penalty of the authz file's abuse block now ("" without one).
	Penalty func() string
	// Detections is the record the ext_authz server keeps (this replica's detections).
	Detections *abuse.Record
}

// AbuseAnswer is the body of GET and DELETE /admin/v1/abuse: the identity's standing
// under the abuse penalty (from the store: every replica's charges) and why, as this
// replica saw it (its last detections of the identity).
type AbuseAnswer struct {
	PenaltyAnswer
	Detections []abuse.Detection `json:"detections"`
}

// abuseTarget parses an abuse query: a domain and one entry, remote_address=ADDR or
// api_key_sha256=HEX (the identities the detectors charge), and the penalty policy.
func (h *Handler) abuseTarget(r *http.Request) (*target, *config.PenaltyPolicy, error) {
	q := r.URL.Query()
	t := &target{domain: q.Get("domain")}
	desc := q.Get("descriptor")
	t.hash = ShortHash(desc)
	if h.cfg.Abuse == nil || h.cfg.Abuse.Penalty == nil || h.cfg.Abuse.Penalty() == "" {
		return t, nil, bad("no abuse detectors are configured (the authz file's abuse: block)")
	}
	if err := repeated(q); err != nil {
		return t, nil, err
	}
	if t.domain == "" {
		return t, nil, bad("domain is missing")
	}
	if len(t.domain) > MaxLen {
		return t, nil, bad("domain is %d bytes, the limit is %d", len(t.domain), MaxLen)
	}
	var err error
	if t.entries, err = ParseDescriptor(desc); err != nil {
		return t, nil, err
	}
	if k := t.entries[0].Key; len(t.entries) != 1 || (k != "remote_address" && k != "api_key_sha256" && k != "customer") {
		return t, nil, bad("descriptor must be one entry, remote_address=ADDRESS, api_key_sha256=HEX or customer=ID (the identities the abuse detectors charge)")
	}
	// The identity as the detectors write it: another spelling of the same address or
	// hash would read and lift a lockout nobody has, and answer "lifted".
	switch e := &t.entries[0]; e.Key {
	case "remote_address":
		a, ok := abuse.Address(e.Value)
		if !ok {
			return t, nil, bad("remote_address %q is not an IP address", truncate(e.Value))
		}
		e.Value = a
	case "api_key_sha256":
		if _, err := hex.DecodeString(e.Value); err != nil || len(e.Value) != 2*sha256.Size {
			return t, nil, bad("api_key_sha256 must be the key's SHA-256 in 64 hex digits, as in the key file")
		}
		e.Value = strings.ToLower(e.Value)
	}
	t.hash = observe.IdentityHash(t.entries)
	set := h.cfg.Engine.Rules()
	if set == nil {
		return t, nil, bad("no configuration loaded")
	}
	pol, ok := set.PenaltyPolicy(h.cfg.Abuse.Penalty())
	if !ok {
		return t, nil, bad("abuse.penalty %q is not a penalty of the rate-limit config", h.cfg.Abuse.Penalty())
	}
	return t, pol, nil
}

func (h *Handler) getAbuse(w http.ResponseWriter, r *http.Request) {
	t, pol, err := h.abuseTarget(r)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	ctx, cancel := h.bound(r.Context())
	defer cancel()
	st, err := h.cfg.Engine.Penalty(ctx, t.domain, t.entries, nil, pol, 0)
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	pv := pol.View()
	ans := AbuseAnswer{PenaltyAnswer: PenaltyAnswer{Domain: t.domain, Identity: t.hash, Penalty: pol.Name, PenaltyPolicy: &pv,
		Locked: st.Locked, PointsLeft: st.PointsLeft, Threshold: st.Threshold}}
	if st.Locked {
		ans.LockedUntil = st.Until.Format(time.RFC3339)
		ans.RemainingLockout = st.Remaining.Round(time.Second).String()
		ans.RemainingLockoutSeconds = headers.Seconds(st.Remaining.Microseconds())
	}
	e := t.entries[0]
	ans.Detections = h.cfg.Abuse.Detections.Get(t.domain, e.Key+"="+e.Value)
	if ans.Detections == nil {
		ans.Detections = []abuse.Detection{}
	}
	result := "not locked"
	if st.Locked {
		result = "locked"
	}
	h.finish(w, r, t, http.StatusOK, result, nil)
	writeJSON(w, http.StatusOK, ans)
}

func (h *Handler) deleteAbuse(w http.ResponseWriter, r *http.Request) {
	t, pol, err := h.abuseTarget(r)
	if err == nil {
		ctx, cancel := h.bound(r.Context())
		err = h.cfg.Engine.LiftPenalty(ctx, t.domain, t.entries, nil, pol)
		cancel()
	}
	if err != nil {
		h.finish(w, r, t, 0, "", err)
		return
	}
	h.finish(w, r, t, http.StatusOK, "lifted", nil)
	pv := pol.View()
	writeJSON(w, http.StatusOK, AbuseAnswer{PenaltyAnswer: PenaltyAnswer{Domain: t.domain, Identity: t.hash, Penalty: pol.Name, PenaltyPolicy: &pv,
		Lifted: true, Threshold: pol.Params.Requests, PointsLeft: pol.Params.Requests}, Detections: []abuse.Detection{}})
}
