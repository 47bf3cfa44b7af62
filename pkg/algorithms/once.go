package algorithms

// The phases of an idempotency key's record (Once): Result.Limit of a claim says which
// one the key is in.
const (
	// OnceNew: the key had no record (or its record ended); the claim made it this
	// request's, in phase OnceClaimed. The caller decides the request and records the
	// decision.
	OnceNew int64 = 0
	// OnceClaimed: the request that claimed the key is still being decided.
	OnceClaimed int64 = 1
	// OnceDecided: the record holds the first decision (Result.Remaining is what the
	// caller recorded, Result.ResetAfter the rest of its wait).
	OnceDecided int64 = 2
	// OnceConflict: the key's record is another request's (another fingerprint).
	OnceConflict int64 = 3
)

// DecideOnce keeps the record of an idempotency key: the first decision of a request
// carrying the key, until l.WindowEnd (the record's end, in microseconds since the
// epoch). l.Requests is the request's fingerprint (what it asks, of which counters),
// never 0. A is the fingerprint of the request that claimed the key, B 0 while it is
// decided and then its decision as the caller recorded it (cost), C the instant that
// decision's wait ends, D the record's end. A record at or past its end is absent.
//
// A cost of 0 claims the key: an absent record becomes this request's and the result is
// Allowed with Limit OnceNew. Otherwise nothing changes, the result is refused and its
// Limit says why: OnceConflict (another fingerprint), OnceClaimed (the first request is
// still being decided), or OnceDecided with the recorded decision in Remaining and the
// rest of its wait in ResetAfter. A positive cost records the decision (the caller's
// encoding, 1 to MaxCount) of the request that claimed the key, with a wait of l.Period,
// and moves the record's end to l.WindowEnd (a claim may hold the key for less time than
// the decision is kept: a claimer that never decides frees it sooner); it never overwrites another request's record nor a recorded decision (it answers as a
// claim would then). Result.TTL is
// the record's remaining life. A negative cost is a claim that claims nothing (a read).
func DecideOnce(s *State, now int64, l *Limit, cost int64) Result {
	live := s.D > now && s.A != 0
	switch {
	case cost > 0:
		if !live {
			// The record ended (or was never made): keep this decision as the first.
			s.A = l.Requests
		} else if s.A != l.Requests {
			return Result{Limit: OnceConflict, TTL: s.D - now}
		} else if s.B != 0 {
			return Result{Limit: OnceDecided, Remaining: s.B, ResetAfter: max(s.C-now, 0), TTL: s.D - now}
		}
		s.B, s.C, s.D = cost, now+l.Period, l.WindowEnd
		return Result{Allowed: true, Limit: OnceDecided, Remaining: cost, ResetAfter: l.Period, TTL: s.D - now}
	case !live:
		if cost < 0 {
			return Result{Allowed: true, Limit: OnceNew}
		}
		s.A, s.B, s.C, s.D = l.Requests, 0, 0, l.WindowEnd
		return Result{Allowed: true, Limit: OnceNew, TTL: s.D - now}
	case s.A != l.Requests:
		return Result{Limit: OnceConflict, TTL: s.D - now}
	case s.B == 0:
		return Result{Limit: OnceClaimed, TTL: s.D - now}
	}
	return Result{Limit: OnceDecided, Remaining: s.B, ResetAfter: max(s.C-now, 0), TTL: s.D - now}
}
