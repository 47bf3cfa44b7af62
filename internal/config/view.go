package config

import "time"

// RuleView is the one JSON form of a resolved Rule: halt shows a rule this way wherever
// it shows one, in the effective configuration (/config: policies, plans and the rule
// of every descriptor), in `halt-envoy check` and in the admin API (its quotas and
// penalty). A field is added here, once, when any of them needs it.
type RuleView struct {
	Name string `json:"name"`
	// Path is the descriptor path of the rule ("key=value/key2"; "plan NAME" for a plan).
	Path                   string         `json:"path,omitempty"`
	Policy                 string         `json:"policy,omitempty"`
	Unlimited              bool           `json:"unlimited,omitempty"`
	ShadowMode             bool           `json:"shadow_mode,omitempty"`
	QuotaMode              bool           `json:"quota_mode,omitempty"`
	Metadata               map[string]any `json:"metadata,omitempty"`
	DetailedMetric         bool           `json:"detailed_metric,omitempty"`
	Replaces               []string       `json:"replaces,omitempty"`
	Cost                   int64          `json:"cost"`
	FailureMode            FailureMode    `json:"failure_mode,omitempty"`
	AllowAlgorithmOverride bool           `json:"allow_algorithm_override,omitempty"`
	Limits                 []LimitView    `json:"limits,omitempty"`
	Plan                   string         `json:"plan,omitempty"`
	PlanFallback           bool           `json:"plan_fallback,omitempty"`
	Quotas                 []QuotaView    `json:"quotas,omitempty"`
	// Penalty names the rule's penalty policy (the policy itself is a PenaltyView).
	Penalty string `json:"penalty,omitempty"`
	// Adaptive is the rule's adaptive block; Factor, when the view is of a running
	// server, the factor in force (the limits shown are the configured ones).
	Adaptive *AdaptiveView `json:"adaptive,omitempty"`
	// OverCharge is what a charge larger than what is left takes (drain or refuse).
	OverCharge     OverCharge `json:"over_charge"`
	MaxDebt        int64      `json:"max_debt,omitempty"`
	ReportOnly     bool       `json:"report_only,omitempty"`
	IdempotencyTTL string     `json:"idempotency_ttl,omitempty"`
	File           string     `json:"file"`
	Line           int        `json:"line,omitempty"`
}

// AdaptiveView is the JSON form of an adaptive block.
type AdaptiveView struct {
	Query     string   `json:"query"`
	Interval  string   `json:"interval"`
	BadAbove  float64  `json:"bad_above"`
	GoodBelow float64  `json:"good_below"`
	Min       float64  `json:"min"`
	Max       float64  `json:"max"`
	Decrease  float64  `json:"decrease"`
	Increase  float64  `json:"increase"`
	Factor    *float64 `json:"factor,omitempty"`
}

// LimitView is the JSON form of a Limit.
type LimitView struct {
	Name           string `json:"name,omitempty"`
	Algorithm      string `json:"algorithm"`
	Unit           string `json:"unit"`
	UnitMultiplier int64  `json:"unit_multiplier"`
	// RequestsPerUnit and Requests are both the exact count per Period (Params.Requests,
	// which the uint32 Limit.RequestsPerUnit saturates): the first name is the
	// configuration's, the second the one `halt-envoy check` printed first.
	RequestsPerUnit int64  `json:"requests_per_unit"`
	Requests        int64  `json:"requests"`
	Period          string `json:"period"`
	Burst           int64  `json:"burst,omitempty"`
	MaxDelay        string `json:"max_delay,omitempty"`
	// Consistency is exact or local_first; MaxOvershoot and SyncInterval are shown for
	// local_first only (resolved: the defaults when the rate_limit left them out).
	Consistency  string  `json:"consistency"`
	MaxOvershoot float64 `json:"max_overshoot,omitempty"`
	SyncInterval string  `json:"sync_interval,omitempty"`
	// Regions is "shared" for a limit shared by every region (with its SyncInterval, the
	// read interval of the other regions' counts), empty for a region's own.
	Regions string `json:"regions,omitempty"`
}

// QuotaView is the JSON form of a Quota.
type QuotaView struct {
	Name     string `json:"name"`
	Period   string `json:"period"`
	Requests int64  `json:"requests"`
	// TimeZone is empty only in a plan's quota that takes the zone of the domain using it.
	TimeZone string `json:"time_zone,omitempty"`
}

// PenaltyView is the JSON form of a PenaltyPolicy.
type PenaltyView struct {
	Name      string   `json:"name"`
	Threshold int64    `json:"threshold"`
	Severity  int64    `json:"severity"`
	Ladder    []string `json:"ladder"`
	Decay     string   `json:"decay"`
	// File and Line locate the definition; only the effective configuration has them.
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
}

// View returns the rule's JSON form.
func (r *Rule) View() RuleView {
	v := RuleView{
		Name: r.Name, Path: r.Path, Policy: r.Policy, Unlimited: r.Unlimited, ShadowMode: r.ShadowMode, QuotaMode: r.QuotaMode, Metadata: r.Metadata,
		DetailedMetric: r.DetailedMetric, Replaces: r.Replaces, Cost: r.Cost,
		FailureMode: r.FailureMode, AllowAlgorithmOverride: r.AllowAlgorithmOverride,
		Plan: r.Plan, PlanFallback: r.PlanFallback, File: r.File, Line: r.Line,
	}
	for i := range r.Limits {
		v.Limits = append(v.Limits, r.Limits[i].View())
	}
	for i := range r.Quotas {
		v.Quotas = append(v.Quotas, r.Quotas[i].View())
	}
	if r.Penalty != nil {
		v.Penalty = r.Penalty.Name
	}
	if a := r.Adaptive; a != nil {
		v.Adaptive = &AdaptiveView{Query: a.Query, Interval: a.Interval.String(), BadAbove: a.BadAbove, GoodBelow: a.GoodBelow,
			Min: a.Min, Max: a.Max, Decrease: a.Decrease, Increase: a.Increase}
	}
	v.OverCharge = OverDrain
	if !r.Charges.Drain() {
		v.OverCharge = OverRefuse
	}
	v.MaxDebt, v.ReportOnly = r.Charges.MaxDebt, r.Charges.ReportOnly
	if r.Charges.IdempotencyTTL > 0 {
		v.IdempotencyTTL = r.Charges.IdempotencyTTL.String()
	}
	return v
}

// View returns the limit's JSON form.
func (l *Limit) View() LimitView {
	v := LimitView{
		Name: l.Name, Algorithm: l.Algorithm.String(), Unit: l.Unit, UnitMultiplier: l.UnitMultiplier,
		RequestsPerUnit: l.Params.Requests, Requests: l.Params.Requests, Period: l.Period().String(), Burst: l.Params.Burst,
	}
	if l.Params.MaxDelay > 0 {
		v.MaxDelay = us(l.Params.MaxDelay)
	}
	v.Consistency = string(ConsistencyExact)
	if l.LocalFirst() {
		v.Consistency = string(ConsistencyLocalFirst)
		v.MaxOvershoot, v.SyncInterval = l.MaxOvershoot, l.SyncInterval.String()
	}
	if l.SharedRegions {
		v.Regions, v.SyncInterval = RegionsShared, l.SyncInterval.String()
	}
	return v
}

// View returns the quota's JSON form.
func (q *Quota) View() QuotaView {
	return QuotaView{Name: q.Name, Period: q.Period.String(), Requests: q.Requests, TimeZone: q.Location.String()}
}

// View returns the penalty policy's JSON form (without File and Line: the model does
// not keep them).
func (p *PenaltyPolicy) View() PenaltyView {
	v := PenaltyView{Name: p.Name, Threshold: p.Params.Requests, Severity: p.Severity, Decay: us(p.Params.Period)}
	for i := 0; i < p.Params.Steps; i++ {
		v.Ladder = append(v.Ladder, us(p.Params.Ladder[i]))
	}
	return v
}

func us(v int64) string { return (time.Duration(v) * time.Microsecond).String() }
