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
	// InvalidKeyPenalty is the authz file's invalid_key_penalty now and its domain
	// (name "", or nil, without one): /admin/v1/penalty reads and lifts that lockout of
	// an address (remote_address=ADDR in that domain, keyed as the detectors key it) by
	// any address of the network.
	InvalidKeyPenalty func() (name, domain string)
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
	if len(t.entries) != 1 {
		return t, bad("%s", abuseDescriptorHelp)
	}
	return h.identityTarget(t, h.cfg.Abuse.Penalty(), "abuse.penalty")
}

// identityTarget completes t, one entry naming an identity ext_authz charges outside
// any rule (abuse.Identity's keys), as a target under the penalty named policy (field:
// the authz file's field naming it, for the error): the entry as the detectors and
// lockouts write it, whatever the operator's spelling. It is the one parsing of such an
// identity, for /abuse and for /penalty's invalid_key_penalty lockouts.
func (h *Handler) identityTarget(t *target, policy, field string) (*target, error) {
	e := &t.entries[0]
	// The identity as the detectors write it: another spelling of the same address (or
	// another address of its IPv6 network) or hash would read and lift a lockout nobody
	// has, and answer "lifted".
	v, err := abuse.Identity(e.Key, e.Value, h.ipv6Prefix())
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
	pol, ok := set.PenaltyPolicy(policy)
	if !ok {
		return t, bad("%s %q is not a penalty of the rate-limit config", field, policy)
	}
	t.pol = pol
	return t, nil
}

// ipv6Prefix is the authz file's ipv6_address_prefix now.
func (h *Handler) ipv6Prefix() int {
	if h.cfg.Abuse != nil && h.cfg.Abuse.IPv6Prefix != nil {
		return h.cfg.Abuse.IPv6Prefix()
	}
	return abuse.DefaultIPv6Prefix
}

// invalidKeyPenalty is the authz file's invalid_key_penalty now and the domain it is
// charged in ("" without one).
func (h *Handler) invalidKeyPenalty() (name, domain string) {
	if h.cfg.Abuse != nil && h.cfg.Abuse.InvalidKeyPenalty != nil {
		return h.cfg.Abuse.InvalidKeyPenalty()
	}
	return "", ""
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
