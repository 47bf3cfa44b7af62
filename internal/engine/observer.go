package engine

import (
	"context"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

// Kind says which part of the SaaS layer produced a descriptor's decision.
type Kind uint8

// The kinds, in the order a descriptor is evaluated: exemptions, penalty lockouts,
// quotas, rate limits. The first that fails decides.
const (
	KindNone Kind = iota
	KindExempt
	KindPenalty
	KindQuota
	KindRate
)

// String names the kind for logs and metrics.
func (k Kind) String() string {
	switch k {
	case KindExempt:
		return "exempt"
	case KindPenalty:
		return "penalty"
	case KindQuota:
		return "quota"
	case KindRate:
		return "rate"
	}
	return "none"
}

// DecisionEvent describes one descriptor's decision to observers.
type DecisionEvent struct {
	Domain string
	// Entries are the request descriptor's entries; valid only during the callback.
	Entries []config.Entry
	// Hits is what the request added (hits_addend resolved; 0 checks without counting).
	Hits     uint64
	Decision *Decision
}

// ViolationEvent describes a violation recorded against a penalty policy.
type ViolationEvent struct {
	Domain string
	// Rule is nil for violations charged outside a rule (ext_authz's invalid keys).
	Rule *config.Rule
	// Entries name the identity; valid only during the callback.
	Entries []config.Entry
	Penalty string
	// Severity is the points recorded.
	Severity int64
	// LockedOut is set when this violation started a lockout, of length Lockout.
	LockedOut bool
	Lockout   time.Duration
}

// Observer sees every decision and violation: metrics, sampled logs and traces hang off
// it. Callbacks run on the request path, so they must be quick and must not block.
type Observer interface {
	OnDecision(ctx context.Context, ev *DecisionEvent)
	OnViolation(ctx context.Context, ev *ViolationEvent)
}
