package engine

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// MaxIdempotencyKey bounds an idempotency key, in bytes: the IETF draft's keys are UUIDs
// and the like, and a key is stored once per request for up to idempotency_ttl.
const MaxIdempotencyKey = 255

// Idempotency says what a descriptor's idempotency key did to its decision.
type Idempotency uint8

// What an idempotency key did.
const (
	// IdemNone: no key, a rule without idempotency_ttl, or the first request with the key
	// (decided and charged as usual, its decision recorded).
	IdemNone Idempotency = iota
	// IdemReplayed: a repeat, answered with the first request's decision and charged
	// nothing.
	IdemReplayed
	// IdemConflict: the key was first used by another request (other counters, hits, or
	// rule): refused, charged nothing. ext_authz answers 422.
	IdemConflict
	// IdemInProgress: the first request with the key is still being decided: refused,
	// charged nothing; a retry later gets its decision. ext_authz answers 409.
	IdemInProgress
)

// String names the state as the RateLimitService's halt-idempotency header does.
func (i Idempotency) String() string {
	switch i {
	case IdemReplayed:
		return "replayed"
	case IdemConflict:
		return "conflict"
	case IdemInProgress:
		return "in-progress"
	}
	return ""
}

// Refuses reports whether the key alone refuses the call: a conflict, or a first
// request still in progress (Report answers the call with it; the transports say why).
func (i Idempotency) Refuses() bool { return i == IdemConflict || i == IdemInProgress }

// IdemClaim bounds how long the first request holds its key before its decision is
// recorded: a replica that stops mid-decision leaves the key in progress no longer.
const IdemClaim = 30 * time.Second

// The per-descriptor idempotency states of one call (scratch.idem).
const (
	idemOff      uint8 = iota
	idemFirst          // claimed: record the decision after the call is decided
	idemWant           // has a key its rule keeps: claim it
	idemAnswered       // answered from the record (replayed, conflict, in progress)
)

// IdempotencyScope is the Descriptor.IdempotencyScope of an HTTP request: a digest of
// its method, its target (path with query, as received) and its body when the caller
// has one (nil: none, as ext_authz without with_request_body). ext_authz and the net/http
// middleware both take it from here, so that they answer a reused key alike. The digest
// is of fixed size whatever the body, and the request's values are never kept.
func IdempotencyScope(method, target string, body []byte) string {
	h := sha256.New()
	_, _ = fmt.Fprintf(h, "%s\x00%d\x00%s\x00%d\x00", method, len(target), target, len(body))
	_, _ = h.Write(body)
	var sum [sha256.Size]byte
	return string(h.Sum(sum[:0]))
}

// IdempotencyKeyOf appends the store key of idempotency key k for the i-th descriptor of
// a call in domain whose counters are identity (AppendIdentity), for calls of one kind
// (IdempotencyKind). The record is the counters' (a short hash of their identity): the
// customers of a domain never see each other's keys.
func IdempotencyKeyOf(dst []byte, domain string, identity []byte, k string, i int, kind byte) []byte {
	dst = appendEscaped(dst, domain)
	dst = append(dst, "|@idem:"...)
	sum := sha256.Sum256(identity)
	dst = base64.RawURLEncoding.AppendEncode(dst, sum[:16])
	dst = append(dst, '|')
	dst = appendEscaped(dst, k)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, int64(i), 10)
	return append(dst, '|', kind)
}

// IdempotencyKind is the kind of call d is under rule, each with its own record of a
// key: 'c' a check (0 hits: Envoy's request-time call of a budget), 'h' a charge, 'p' a
// report-only charge, 'r' a refund. So Envoy's after-response charge, which carries the
// request's headers and so its key, is decided once on its own instead of conflicting
// with the request-time check.
func IdempotencyKind(d *Descriptor, rule *config.Rule) byte {
	switch {
	case d.Hits == 0:
		return 'c'
	case d.Refund:
		return 'r'
	case d.reported(rule):
		return 'p'
	}
	return 'h'
}

// fingerprintOne adds descriptor i, whose counters' identity is identity, to the
// call's fingerprint h (see claimIdempotency): its counters (its rule and identity),
// hits, charge mode and request (IdempotencyScope), so that the key sent for another
// request, route or cost is a conflict on each of them. The same on every replica of
// one configuration.
func fingerprintOne(h hash.Hash64, i int, identity []byte, d *Descriptor, rule *config.Rule) {
	_, _ = fmt.Fprintf(h, "%d|", i)
	_, _ = h.Write(identity)
	_, _ = fmt.Fprintf(h, "|%s|%d|%t|%t|%d|%s\n", rule.Name, d.Hits, d.Refund, d.Report, len(d.IdempotencyScope), d.IdempotencyScope)
}

// fingerprintOf is what a call with an idempotency key asks, as its records keep it
// (algorithms.Once's Limit.Requests, 1 to MaxRequests), from its fingerprint hash.
func fingerprintOf(h hash.Hash64) int64 {
	return int64(h.Sum64()%uint64(algorithms.MaxRequests)) + 1
}

// The record of a decision (algorithms.Once's cost, 1 to MaxCount): bit 0 set,
// bit 1 admitted, bit 2 "never" (RetryAfter -1), bits 3-8 what reported it (0 nothing,
// 1+j the rule's limit j, 33+q its quota q), then the remaining count.
const (
	recAdmitted   = 1 << 1
	recNever      = 1 << 2
	recRefShift   = 3
	recRefMask    = 63
	recRemShift   = 9
	recQuotaRef   = 33
	maxRecordRest = int64(1)<<(52-recRemShift) - 1
)

func packDecision(dec *Decision) int64 {
	v := int64(1)
	if dec.Code == CodeOK {
		v |= recAdmitted
	}
	if dec.Result.RetryAfter < 0 {
		v |= recNever
	}
	v |= int64(limitRef(dec)) << recRefShift
	return v | min(max(dec.Result.Remaining, 0), maxRecordRest)<<recRemShift
}

// limitRef numbers the limit dec reports among its rule's limits and quotas (0: none).
func limitRef(dec *Decision) int {
	r, l := dec.Rule, dec.Limit
	if r == nil || l == nil {
		return 0
	}
	if dec.Kind == KindQuota {
		for q := range r.Quotas {
			if q < recRefMask-recQuotaRef && l.Name == "quota:"+r.Quotas[q].Name {
				return recQuotaRef + q
			}
		}
		return 0
	}
	for j := range r.Limits {
		c := &r.Limits[j]
		if j < recQuotaRef-1 && (c == l || c.Name == l.Name && c.Params.Period == l.Params.Period) {
			return 1 + j
		}
	}
	return 0
}

// replay fills dec with the decision record v of rule, whose wait has wait left.
func replay(dec *Decision, rule *config.Rule, v, wait, nowUS int64) {
	dec.Idempotency = IdemReplayed
	dec.Code = CodeOverLimit
	if v&recAdmitted != 0 {
		dec.Code = CodeOK
	}
	r := algorithms.Result{Allowed: dec.Code == CodeOK, Remaining: v >> recRemShift, ResetAfter: wait}
	if !r.Allowed {
		r.RetryAfter = wait
		if v&recNever != 0 {
			r.RetryAfter = -1
		}
	}
	switch ref := int(v>>recRefShift) & recRefMask; {
	case ref >= recQuotaRef && ref-recQuotaRef < len(rule.Quotas):
		dec.Kind, dec.Limit = KindQuota, QuotaLimit(&rule.Quotas[ref-recQuotaRef], nowUS)
		r.Limit = dec.Limit.Params.Requests
	case ref >= 1 && ref-1 < len(rule.Limits):
		dec.Kind, dec.Limit = KindRate, &rule.Limits[ref-1]
		r.Limit = dec.Limit.Params.Requests
		if a := dec.Limit.Algorithm; a == algorithms.TokenBucket || a == algorithms.LeakyBucket {
			r.Limit = dec.Limit.Params.Capacity()
		}
	case !r.Allowed && rule.Penalty != nil:
		// A refusal recorded with no limit or quota of the rule: a lockout.
		p := rule.Penalty
		dec.Kind, dec.Limit = KindPenalty, &config.Limit{Name: "penalty:" + p.Name, Algorithm: algorithms.Penalty, Params: p.Params}
		r.Limit = p.Params.Requests
	}
	dec.Result = r
}

// claimIdempotency is stage 0: every descriptor whose rule keeps idempotency keys
// (idempotency_ttl) and that carries one claims it in one store round. The first request
// with a key goes on to be decided (sc.idem: idemFirst); a repeat is answered from the
// record and charged nothing (idemAnswered). A claim the store could not answer leaves
// its descriptor to be decided as if it had no key.
func (e *Engine) claimIdempotency(ctx context.Context, domain string, nowUS int64, sc *scratch, descs []Descriptor, decisions []Decision) {
	var ops []backends.Op
	var owners []int
	// Each keyed descriptor's identity is built once: the fingerprint reads it, and its
	// record's key (kept in sc.idemKeys for the record or the release after the call)
	// is its hash.
	if cap(sc.idemKeys) < len(descs) {
		sc.idemKeys = make([]string, len(descs))
	}
	sc.idemKeys = sc.idemKeys[:len(descs)]
	h := fnv.New64a()
	for i := range descs {
		if sc.idem[i] != idemWant {
			continue
		}
		d, rule := &descs[i], decisions[i].Rule
		sc.keyBuf = AppendIdentity(sc.keyBuf[:0], domain, d.Entries, rule)
		fingerprintOne(h, i, sc.keyBuf, d, rule)
		sc.idemKeys[i] = string(IdempotencyKeyOf(nil, domain, sc.keyBuf, d.IdempotencyKey, i, IdempotencyKind(d, rule)))
	}
	sc.idemFP = fingerprintOf(h)
	for i := range descs {
		if sc.idem[i] != idemWant {
			continue
		}
		rule := decisions[i].Rule
		end := nowUS + min(rule.Charges.IdempotencyTTL, IdemClaim).Microseconds()
		ops = append(ops, backends.Op{
			Key:       sc.idemKeys[i],
			Algorithm: algorithms.Once,
			Limit:     algorithms.Limit{Requests: sc.idemFP, WindowEnd: end},
		})
		owners = append(owners, i)
		sc.idem[i] = idemOff
	}
	ptrs := make([]*backends.Op, len(ops))
	for k := range ops {
		ptrs[k] = &ops[k]
	}
	if err := e.cfg.Store.Apply(ctx, nowUS, ptrs); err != nil && ctx.Err() != nil {
		return
	}
	for k := range ops {
		op, i := &ops[k], owners[k]
		if op.Err != nil {
			e.cfg.Metrics.StoreErrors.WithLabelValues(e.cfg.StoreName).Inc()
			e.logFailure("idempotency key not claimed; the request is decided as if it had none", domain, op.Err)
			e.cfg.Metrics.Idempotency.WithLabelValues("unclaimed").Inc()
			continue
		}
		dec := &decisions[i]
		outcome := "first"
		switch r := op.Result; r.Limit {
		case algorithms.OnceNew:
			sc.idem[i] = idemFirst
		case algorithms.OnceDecided:
			replay(dec, dec.Rule, r.Remaining, r.ResetAfter, nowUS)
			sc.idem[i], outcome = idemAnswered, "replayed"
		case algorithms.OnceClaimed:
			dec.Code, dec.Idempotency = CodeOverLimit, IdemInProgress
			dec.Result = algorithms.Result{ResetAfter: min(r.TTL, IdemClaim.Microseconds()), RetryAfter: min(r.TTL, IdemClaim.Microseconds())}
			sc.idem[i], outcome = idemAnswered, "in_progress"
		default:
			dec.Code, dec.Idempotency = CodeOverLimit, IdemConflict
			dec.Result = algorithms.Result{RetryAfter: -1}
			sc.idem[i], outcome = idemAnswered, "conflict"
		}
		e.cfg.Metrics.Idempotency.WithLabelValues(outcome).Inc()
	}
}

// recordIdempotency records the decision of every descriptor that claimed its key, for
// its rule's idempotency_ttl; a refusal only until its wait ends (a "never" refusal for
// the TTL). A record that fails leaves the claim, which ends after
// IdemClaim: a retry is then decided (and charged) again.
func (e *Engine) recordIdempotency(ctx context.Context, domain string, nowUS int64, sc *scratch, descs []Descriptor, decisions []Decision) {
	var ops []backends.Op
	var release []string
	for i := range descs {
		if sc.idem[i] != idemFirst {
			continue
		}
		dec := &decisions[i]
		if dec.Code != CodeOK && dec.Limit == nil || dec.FailedOpen {
			// Refused by the failure mode, or let through by it: not a decision to
			// repeat. The retry is decided anew.
			release = append(release, sc.idemKeys[i])
			continue
		}
		wait := dec.Result.ResetAfter
		end := nowUS + dec.Rule.Charges.IdempotencyTTL.Microseconds()
		if dec.Code != CodeOK {
			wait = max(dec.Result.Wait(), 0)
			if dec.Result.RetryAfter >= 0 {
				// A refusal holds only until its wait ends: a retry after it is decided
				// afresh, as the client was told it may be ("never" is kept the TTL).
				if wait <= 0 {
					release = append(release, sc.idemKeys[i])
					continue
				}
				end = min(end, nowUS+wait)
			}
		}
		ops = append(ops, backends.Op{
			Key:       sc.idemKeys[i],
			Algorithm: algorithms.Once,
			Limit:     algorithms.Limit{Requests: sc.idemFP, Period: min(max(wait, 0), algorithms.MaxPeriod), WindowEnd: end},
			Cost:      packDecision(dec),
		})
	}
	if len(release) > 0 {
		_ = e.deleteKeys(ctx, release)
	}
	if len(ops) == 0 {
		return
	}
	ptrs := make([]*backends.Op, len(ops))
	for k := range ops {
		ptrs[k] = &ops[k]
	}
	if err := e.applyOps(ctx, nowUS, ptrs); err != nil {
		e.logFailure("idempotency decision not recorded; the key stays in progress until its claim ends", domain, err)
	}
}

// releaseIdempotency forgets the claims of a call that failed before it was decided, so
// that its retry is decided instead of answered in progress.
func (e *Engine) releaseIdempotency(sc *scratch) {
	var keys []string
	for i := range sc.idem {
		if sc.idem[i] == idemFirst {
			keys = append(keys, sc.idemKeys[i])
		}
	}
	if len(keys) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = e.deleteKeys(ctx, keys)
	}
}
