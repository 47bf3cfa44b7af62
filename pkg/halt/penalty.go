package halt

import (
	"context"
	"fmt"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Penalty is a progressive lockout policy: an identity that gathers Threshold violation
// points is locked out for Ladder[0]; each further lockout climbs one step of the
// ladder; every quiet Decay steps one level back down (and forgets gathered points).
// Abusers are slowed ever harder while a client that misbehaved once recovers on its own.
type Penalty struct {
	// Name tells penalty policies apart in the store; empty means "default".
	Name string
	// Threshold is the points that trigger a lockout; at least 1.
	Threshold int64
	// Ladder holds the lockout durations, increasing, 1 to algorithms.MaxLadder of them.
	// Past the last step, lockouts stay at the last duration.
	Ladder []time.Duration
	// Decay is the quiet time after which one level (and all points) is forgiven.
	Decay time.Duration
	// Severity is the points one over-limit answer records against a Rule's Penalty; 0
	// means 1. A PenaltyManager's caller names the points of each violation instead.
	Severity int64
}

// Limit converts p to the algorithms' parameters and validates them with the rules the
// server applies to its penalties: configuration.
func (p Penalty) Limit() (algorithms.Limit, error) {
	if p.Threshold < 1 {
		return algorithms.Limit{}, fmt.Errorf("%w: penalty threshold must be at least 1, got %d", ErrInvalid, p.Threshold)
	}
	if len(p.Ladder) == 0 || len(p.Ladder) > algorithms.MaxLadder {
		return algorithms.Limit{}, fmt.Errorf("%w: penalty ladder needs 1 to %d steps, got %d", ErrInvalid, algorithms.MaxLadder, len(p.Ladder))
	}
	l := algorithms.Limit{Requests: p.Threshold, Period: int64(p.Decay / time.Microsecond), Steps: len(p.Ladder)}
	for i, d := range p.Ladder {
		l.Ladder[i] = int64(d / time.Microsecond)
	}
	if err := l.Validate(algorithms.Penalty); err != nil {
		return algorithms.Limit{}, fmt.Errorf("%w: penalty %s: %v", ErrInvalid, p.name(), err)
	}
	return l, nil
}

func (p *Penalty) name() string {
	if p.Name != "" {
		return p.Name
	}
	return "default"
}

// PenaltyStatus is an identity's standing under a penalty policy.
type PenaltyStatus struct {
	// Active reports a lockout in force now.
	Active bool
	// Until is when the lockout ends (zero when not Active).
	Until time.Time
	// Remaining is the lockout left (0 when not Active).
	Remaining time.Duration
	// PointsLeft is how many more violation points start the next lockout (0 while Active).
	PointsLeft int64
	// Threshold is the policy's threshold, for display next to PointsLeft.
	Threshold int64
}

// PenaltyManager applies one Penalty policy to identities, outside any rule: the
// policy is built in code and the engine keeps and reads the identities' state, as it
// does for ext_authz's invalid-key penalty.
type PenaltyManager struct {
	eng    *engine.Engine
	pol    *config.PenaltyPolicy
	policy Penalty
	domain string
	opt    options
}

// PenaltyDomain is the domain of a PenaltyManager's identities, after the key prefix.
const PenaltyDomain = "halt:pen"

// NewPenaltyManager validates p and returns a manager keeping lockouts in store.
func NewPenaltyManager(store backends.Store, p Penalty, opts ...Option) (*PenaltyManager, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalid)
	}
	if _, err := p.Limit(); err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	m := &PenaltyManager{policy: p, domain: o.prefix + PenaltyDomain, opt: o}
	set, err := Build(Domain{Name: m.domain, Penalties: []Penalty{p}}).parse()
	if err != nil {
		return nil, err
	}
	m.pol, _ = set.PenaltyPolicy(p.name())
	if m.eng, err = newEngine(store, func() *config.Set { return set }, &o); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *PenaltyManager) who(id string) []config.Entry {
	return []config.Entry{{Key: "key", Value: id}}
}

// Key returns the store key holding id's penalty state.
func (m *PenaltyManager) Key(id string) string {
	return string(engine.PenaltyKey(nil, m.domain, m.who(id), nil, m.pol))
}

// RecordViolation adds severity points to id (an over-limit answer, a failed login, a
// malformed request: whatever the caller wants to punish) and returns its standing.
// Points recorded while a lockout is in force are ignored: the lockout is the answer.
func (m *PenaltyManager) RecordViolation(ctx context.Context, id string, severity int64) (PenaltyStatus, error) {
	if severity < 1 {
		return PenaltyStatus{}, fmt.Errorf("%w: severity must be at least 1, got %d", ErrInvalid, severity)
	}
	return m.do(ctx, id, severity)
}

// Status reads id's standing without recording anything.
func (m *PenaltyManager) Status(ctx context.Context, id string) (PenaltyStatus, error) {
	return m.do(ctx, id, 0)
}

// Active reports whether id is locked out now, and until when. Callers check it before
// doing any work for id.
func (m *PenaltyManager) Active(ctx context.Context, id string) (bool, time.Time, error) {
	st, err := m.do(ctx, id, 0)
	return st.Active, st.Until, err
}

// Lift ends id's lockout and forgets its history (level and points): an operator's
// pardon.
func (m *PenaltyManager) Lift(ctx context.Context, id string) error {
	if err := checkKey(id); err != nil {
		return err
	}
	ctx, cancel := m.opt.bound(ctx)
	defer cancel()
	return m.eng.LiftPenalty(ctx, m.domain, m.who(id), nil, m.pol)
}

func (m *PenaltyManager) do(ctx context.Context, id string, severity int64) (PenaltyStatus, error) {
	if err := checkKey(id); err != nil {
		return PenaltyStatus{}, err
	}
	ctx, cancel := m.opt.bound(ctx)
	defer cancel()
	st, err := m.eng.Penalty(ctx, m.domain, m.who(id), nil, m.pol, severity)
	if err != nil {
		return PenaltyStatus{}, err
	}
	return PenaltyStatus{Active: st.Locked, Until: st.Until, Remaining: st.Remaining, PointsLeft: st.PointsLeft, Threshold: st.Threshold}, nil
}
