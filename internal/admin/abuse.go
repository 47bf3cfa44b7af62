package admin

import (
	"errors"
	"net/http"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/observe"
)

// Abuse is what /admin/v1/abuse reads: the penalty ext_authz's abuse detectors feed
// and the record of their detections.
type Abuse struct {
	// Penalty names the penalty of the authz file's abuse block now ("" without one).
	Penalty func() string
	// IPv6Prefix is the authz file's ipv6_address_prefix now: the IPv6 network a
	// remote_address stands for (abuse.Address). Nil means abuse.DefaultIPv6Prefix.
	IPv6Prefix func() int
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

// abuseDescriptorHelp is the answer to a descriptor that is not one identity the
// detectors charge.
const abuseDescriptorHelp = "descriptor must be one entry, " + abuse.AddressKey + "=ADDRESS, " + abuse.APIKeyKey + "=HEX or " +
	abuse.CustomerKey + "=ID (the identities the abuse detectors charge)"

// abuseTarget parses an abuse query: a domain and one entry, remote_address=ADDR,
// api_key_sha256=HEX or customer=ID (the identities the detectors charge), and the
// penalty policy the detectors feed. It matches no rule: the identity is the
// detectors', not a descriptor of the rate-limit config.
func (h *Handler) abuseTarget(r *http.Request) (*target, error) {
	if h.cfg.Abuse == nil || h.cfg.Abuse.Penalty == nil || h.cfg.Abuse.Penalty() == "" {
		t := &target{domain: r.URL.Query().Get("domain"), hash: ShortHash(r.URL.Query().Get("descriptor"))}
		return t, bad("no abuse detectors are configured (the authz file's abuse: block)")
	}
	t, err := parseTarget(r)
	if err != nil {
		return t, err
	}
	e := &t.entries[0]
	if len(t.entries) != 1 {
		return t, bad("%s", abuseDescriptorHelp)
	}
	// The identity as the detectors write it: another spelling of the same address (or
	// another address of its IPv6 network) or hash would read and lift a lockout nobody
	// has, and answer "lifted".
	prefix := abuse.DefaultIPv6Prefix
	if h.cfg.Abuse.IPv6Prefix != nil {
		prefix = h.cfg.Abuse.IPv6Prefix()
	}
	v, err := abuse.Identity(e.Key, e.Value, prefix)
	switch {
	case errors.Is(err, abuse.ErrNotIdentity):
		return t, bad("%s", abuseDescriptorHelp)
	case err != nil:
		return t, bad("%s", err)
	}
	e.Value = v
	t.hash = observe.IdentityHash(t.entries)
	set := h.cfg.Engine.Rules()
	if set == nil {
		return t, bad("no configuration loaded")
	}
	pol, ok := set.PenaltyPolicy(h.cfg.Abuse.Penalty())
	if !ok {
		return t, bad("abuse.penalty %q is not a penalty of the rate-limit config", h.cfg.Abuse.Penalty())
	}
	t.pol = pol
	return t, nil
}

// abuseAnswer adds the detections this replica recorded of the identity to its standing.
func (h *Handler) abuseAnswer(t *target, ans PenaltyAnswer) any {
	e := t.entries[0]
	ds := h.cfg.Abuse.Detections.Get(t.domain, e.Key+"="+e.Value)
	if ds == nil || ans.Lifted {
		ds = []abuse.Detection{}
	}
	return AbuseAnswer{PenaltyAnswer: ans, Detections: ds}
}

func (h *Handler) getAbuse(w http.ResponseWriter, r *http.Request) {
	h.readPenalty(w, r, h.abuseTarget, h.abuseAnswer)
}

func (h *Handler) deleteAbuse(w http.ResponseWriter, r *http.Request) {
	h.liftPenalty(w, r, h.abuseTarget, h.abuseAnswer)
}
