package engine

import (
	"context"
	"fmt"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// stage says what a store round is for, and so how its results are folded.
type stage uint8

const (
	// stageDecide: penalty lockout checks, rate limits and quota charges. A result may
	// deny the descriptor, and a failed op takes the rule's failure mode.
	stageDecide stage = iota
	// stagePrecheck: the reads (cost 0) of every quota of a multi-quota descriptor. A
	// quota without room for the request denies it; a failed op takes the failure mode.
	stagePrecheck
	// stageRecord: the violations of descriptors that ended over limit. A result only
	// starts or lengthens a lockout; a failed op is counted and logged, and the call's
	// answer stands.
	stageRecord
)

// runStage sends the queued ops (if any) to the store in one round, folds every op into
// its descriptor's decision, and empties the queue. It is the one place Check reads store
// results (Penalize, outside any descriptor, reads its one op itself).
//
// The store contract gives every op a Result or an Err. An Apply error that no op
// carries means the store failed as a whole without saying so per op: every op of the
// round failed with it. The returned delay is the longest leaky-bucket shaping wait of
// an admitted op; the error is ErrStoreUnavailable (failure_mode error) or the caller's
// own context error.
func (e *Engine) runStage(ctx context.Context, st stage, domain string, nowUS int64, sc *scratch, descs []Descriptor, decisions []Decision) (delay int64, err error) {
	if len(sc.ops) == 0 {
		return 0, nil
	}
	applyErr := e.apply(ctx, nowUS, sc)
	wholeErr := applyErr
	if applyErr != nil {
		for k := range sc.ops {
			if sc.ops[k].Err != nil {
				wholeErr = nil // the store said which ops failed
				break
			}
		}
	}
	for k := range sc.tickets {
		// Local-first ops that went to the store: their answers grant the keys new
		// budgets; a failed one may still be decided from local state (then it carries
		// a Result and is treated as decided locally).
		if sc.tickets[k].Local() && e.lf.Settle(sc.tickets[k], &sc.ops[k], wholeErr, nowUS) {
			sc.local[k] = true
		}
	}
	if applyErr != nil && st != stageRecord && ctx.Err() != nil {
		// The caller gave up while the store worked: nobody is left to receive a
		// failure-mode answer, and counting one as fail_open would mislead.
		sc.clearOps()
		return 0, ctx.Err()
	}
	var failed, failErr error // the first op failure; the failure that fails the call
	for k := range sc.ops {
		op := &sc.ops[k]
		owner := sc.owners[k]
		dec := &decisions[owner]
		l, kind := sc.limits[k], sc.kinds[k]
		if op.Err != nil || (wholeErr != nil && !sc.local[k]) {
			opErr := firstErr(op.Err, wholeErr)
			if failed == nil {
				failed = opErr
			}
			e.cfg.Metrics.StoreErrors.WithLabelValues(e.cfg.StoreName).Inc()
			if st != stageRecord {
				if ferr := e.fail(dec, l, kind, opErr); ferr != nil {
					failErr = ferr
				}
			}
			continue
		}
		if l != nil && l.SharedRegions && e.cfg.Regions != nil {
			// A shared limit's op ran with what the other regions left of it (Remaining
			// is the whole limit's): the limit reported is the limit.
			op.Result.Limit = l.Params.Requests
		}
		switch r := &op.Result; st {
		case stageDecide:
			// Inline, not a function: this is the one fold on every call's path.
			if kind == KindPenalty {
				// A check: only an active lockout matters, and it decides alone.
				if !r.Allowed {
					dec.Code, dec.Kind, dec.Limit, dec.Result = CodeOverLimit, KindPenalty, l, *r
				}
				continue
			}
			if r.Allowed && r.Delay > dec.Delay {
				dec.Delay = r.Delay
				delay = max(delay, r.Delay)
			}
			if !r.Allowed && dec.Rule != nil && dec.Rule.ShadowMode {
				// Shadow mode: report the denial, answer OK.
				dec.Shadow = true
				if dec.Limit == nil || Tighter(dec, l, *r) {
					dec.Limit, dec.Result, dec.Kind = l, *r, kind
				}
				continue
			}
			// A quota reports only when it denies or is tighter than the rate limit.
			if Tighter(dec, l, *r) {
				dec.Limit, dec.Result, dec.Kind = l, *r, kind
			}
			if !r.Allowed {
				dec.Code = CodeOverLimit
			}
		case stagePrecheck:
			precheck(dec, l, op.Result, int64Cost(descs[owner].Hits, dec.Rule.Cost))
		case stageRecord:
			ev := ViolationEvent{Domain: domain, Rule: dec.Rule, Entries: descs[owner].Entries, Penalty: dec.Rule.Penalty.Name, Severity: op.Cost}
			e.reportViolation(ctx, &ev, dec.Rule.Penalty, op.Result)
		}
	}
	sc.clearOps()
	if failed != nil {
		switch {
		case failErr != nil:
			e.logFailure("store failed; answering UNAVAILABLE per failure_mode error", domain, failErr)
			return 0, fmt.Errorf("%w: %w", ErrStoreUnavailable, failErr)
		case st == stageRecord:
			e.logFailure("recording penalty violations failed", domain, failed)
		default:
			e.logFailure("store failed; applying failure mode", domain, failed)
		}
	}
	return delay, nil
}

// precheck folds one quota read into dec: a quota with less room than the request needs
// refuses it, with the wait until the quota's period ends (-1: the request costs more
// than the whole quota, it can never pass).
func precheck(dec *Decision, l *config.Limit, r algorithms.Result, need int64) {
	if r.Remaining >= need || dec.Code != CodeOK {
		return
	}
	r.Allowed = false
	r.RetryAfter = r.ResetAfter
	if need > r.Limit {
		r.RetryAfter = -1
	}
	dec.Code, dec.Kind, dec.Limit, dec.Result = CodeOverLimit, KindQuota, l, r
}

// fail applies the failure mode to one op the store could not decide. It returns an
// error only for failure_mode "error".
func (e *Engine) fail(dec *Decision, l *config.Limit, kind Kind, err error) error {
	switch e.failureMode(dec.Rule) {
	case config.FailDeny:
		dec.Code = CodeOverLimit
		dec.Limit, dec.Kind = l, kind
		dec.Result = algorithms.Result{Limit: l.Params.Requests, RetryAfter: 1_000_000, ResetAfter: 1_000_000}
		return nil
	case config.FailError:
		return err
	}
	dec.FailedOpen = true
	if dec.Limit == nil {
		dec.Limit, dec.Kind = l, kind
		dec.Result = algorithms.Result{Allowed: true, Limit: l.Params.Requests, Remaining: l.Params.Requests}
	}
	return nil
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
