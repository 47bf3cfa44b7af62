package config

import (
	"time"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// OverCharge says what a charge larger than what is left takes.
type OverCharge string

// The over_charge values.
const (
	// OverDrain (the default) takes everything that is left, and the rule's max_debt
	// beyond it; the answer is still OVER_LIMIT. What a token budget, whose costs are
	// known after the response, needs: the tokens were spent, and are counted.
	OverDrain OverCharge = "drain"
	// OverRefuse takes nothing: the request is refused and not counted (fixed_window
	// still counts it, as the reference service does).
	OverRefuse OverCharge = "refuse"
)

// MaxIdempotencyTTL bounds idempotency_ttl: a record of each key's first decision is kept
// in the store that long.
const MaxIdempotencyTTL = 7 * 24 * time.Hour

// Charges is how a rule takes its costs: what a charge that does not fit takes, whether
// its charges are report-only, and how long the first decision of an idempotency key is
// kept.
type Charges struct {
	// OverCharge is OverDrain or OverRefuse ("" is OverDrain).
	OverCharge OverCharge
	// MaxDebt is how far below zero, in hits, a drained or reported charge may take a
	// key (algorithms.Limit.MaxDebt); 0 drains to zero.
	MaxDebt int64
	// ReportOnly makes every charge of the rule (hits above 0) report-only: recorded
	// whether it fits or not, never refused. Checks (hits 0) are decided as usual.
	ReportOnly bool
	// IdempotencyTTL, when above 0, makes a request carrying an idempotency key decided
	// once: a repeat within it gets the first decision again and is not charged again.
	IdempotencyTTL time.Duration
}

// Drain reports whether a charge that does not fit takes what is left.
func (c *Charges) Drain() bool { return c.OverCharge != OverRefuse }

// Apply returns p with the rule's charge settings (algorithms.Limit.Drain and MaxDebt).
func (c *Charges) Apply(p algorithms.Limit) algorithms.Limit {
	p.Drain, p.MaxDebt = c.Drain(), c.MaxDebt
	return p
}

// chargesCfg are the charge keys as written; each is inherited (from a policy, or a
// plan) only when it is not set here.
type chargesCfg struct {
	over                                  OverCharge
	maxDebt                               int64
	reportOnly                            bool
	idemTTL                               time.Duration
	overNode, debtNode, reportNode, idemN *yaml.Node
}

// resolve fills c's unset keys from inherited.
func (cc *chargesCfg) resolve(c Charges, inherited Charges) Charges {
	if cc.overNode == nil {
		c.OverCharge = inherited.OverCharge
	}
	if cc.debtNode == nil {
		c.MaxDebt = inherited.MaxDebt
	}
	if cc.reportNode == nil {
		c.ReportOnly = inherited.ReportOnly
	}
	if cc.idemN == nil {
		c.IdempotencyTTL = inherited.IdempotencyTTL
	}
	return c
}

// charges returns the keys as set here.
func (cc *chargesCfg) charges() Charges {
	return Charges{OverCharge: cc.over, MaxDebt: cc.maxDebt, ReportOnly: cc.reportOnly, IdempotencyTTL: cc.idemTTL}
}

func overChargeKey[T ruled]() key[T] {
	return key[T]{"over_charge", func(d *decoder, t T, p pair, f string) {
		c := &t.rules().charges
		switch v := OverCharge(d.str(p.v, f)); v {
		case OverDrain, OverRefuse:
			c.over, c.overNode = v, p.v
		default:
			d.add(p.v, f, "must be drain or refuse, got %q", string(v))
		}
	}}
}

func maxDebtKey[T ruled]() key[T] {
	return key[T]{"max_debt", func(d *decoder, t T, p pair, f string) {
		c := &t.rules().charges
		v, ok := d.integer(p.v, f)
		if !ok {
			return
		}
		if v < 0 || v > algorithms.MaxRequests {
			d.add(p.v, f, "must be between 0 and %d, got %d", algorithms.MaxRequests, v)
			return
		}
		c.maxDebt, c.debtNode = v, p.v
	}}
}

func reportOnlyKey[T ruled]() key[T] {
	return key[T]{"report_only", func(d *decoder, t T, p pair, f string) {
		c := &t.rules().charges
		c.reportOnly, c.reportNode = d.boolean(p.v, f), p.v
	}}
}

func idempotencyTTLKey[T ruled]() key[T] {
	return key[T]{"idempotency_ttl", func(d *decoder, t T, p pair, f string) {
		c := &t.rules().charges
		v, ok := d.duration(p.v, f)
		if !ok {
			return
		}
		if v < time.Second || v > MaxIdempotencyTTL {
			d.add(p.v, f, "must be between 1s and %s, got %s", MaxIdempotencyTTL, v)
			return
		}
		c.idemTTL, c.idemN = v, p.v
	}}
}

// checkCharges reports charge keys that exclude each other.
func (d *decoder) checkCharges(c *chargesCfg, field string) {
	if c.over == OverRefuse && c.debtNode != nil && c.maxDebt > 0 {
		d.add(c.debtNode, join(field, "max_debt"), "max_debt needs over_charge: drain (a refused charge takes nothing, so it never leaves a debt)")
	}
}

// checkDebt reports a max_debt that does not fit a limit of r (the bucket's time range,
// the sliding log's bound), at the node that set it (or at line, col of file).
func (b *builder) checkDebt(r *Rule, c *chargesCfg, file, field string, line, col int) bool {
	if r.Charges.MaxDebt == 0 {
		return true
	}
	for i := range r.Limits {
		l := &r.Limits[i]
		p := r.Charges.Apply(l.Params)
		if err := p.Validate(l.Algorithm); err != nil {
			if c.debtNode != nil {
				line, col = c.debtNode.Line, c.debtNode.Column
			}
			b.add(file, line, col, field+".max_debt", err.Error())
			return false
		}
	}
	return true
}
