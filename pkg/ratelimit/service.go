package ratelimit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/plans"
)

// Service implements envoy.service.ratelimit.v3.RateLimitService on an Engine.
type Service struct {
	rlsv3.UnimplementedRateLimitServiceServer
	engine  *Engine
	headers HeaderFamilies
	pool    sync.Pool // *callScratch
	// duration and ok are resolved once: two label lookups per call showed in profiles.
	duration prometheus.Observer
	ok       prometheus.Counter
}

// HeaderFamilies selects which rate-limit response headers are added.
type HeaderFamilies struct {
	// IETF adds the draft-ietf-httpapi-ratelimit-headers RateLimit and RateLimit-Policy fields.
	IETF bool
	// XRateLimit adds X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset.
	XRateLimit bool
}

// NewService returns the gRPC service.
func NewService(e *Engine, headers HeaderFamilies) *Service {
	s := &Service{engine: e, headers: headers}
	s.pool.New = func() any { return new(callScratch) }
	if m := e.cfg.Metrics; m != nil {
		s.duration = m.RequestDuration.WithLabelValues("ShouldRateLimit")
		s.ok = m.Requests.WithLabelValues("ShouldRateLimit", codes.OK.String())
	}
	return s
}

type callScratch struct {
	descs     []Descriptor
	decisions []Decision
	entries   []plans.Entry
}

// ShouldRateLimit decides a call from Envoy's rate-limit filter.
func (s *Service) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	start := time.Now()
	resp, err := s.shouldRateLimit(ctx, req)
	if m := s.engine.cfg.Metrics; m != nil {
		s.duration.Observe(time.Since(start).Seconds())
		if err == nil {
			s.ok.Inc()
		} else {
			m.Requests.WithLabelValues("ShouldRateLimit", status.Code(err).String()).Inc()
		}
	}
	return resp, err
}

func (s *Service) shouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	if n := len(req.Descriptors); n > s.engine.cfg.MaxDescriptors {
		// Refuse before converting anything: a hostile call must not cost its size.
		if m := s.engine.cfg.Metrics; m != nil {
			m.Rejected.WithLabelValues("invalid_argument").Inc()
		}
		return nil, status.Errorf(codes.InvalidArgument, "%d descriptors in one request, the limit is %d", n, s.engine.cfg.MaxDescriptors)
	}
	sc := s.pool.Get().(*callScratch)
	defer s.pool.Put(sc)
	n := len(req.Descriptors)
	sc.descs = grow(sc.descs, n)
	sc.decisions = grow(sc.decisions, n)
	total := 0
	for i, d := range req.Descriptors {
		if k := len(d.GetEntries()); k > s.engine.cfg.MaxEntries {
			return nil, status.Errorf(codes.InvalidArgument, "invalid request: descriptor %d has %d entries, the limit is %d", i, k, s.engine.cfg.MaxEntries)
		}
		total += len(d.GetEntries())
	}
	sc.entries = grow(sc.entries, total)[:0]
	for i, d := range req.Descriptors {
		first := len(sc.entries)
		for _, en := range d.GetEntries() {
			sc.entries = append(sc.entries, plans.Entry{Key: en.GetKey(), Value: en.GetValue()})
		}
		sc.descs[i] = Descriptor{Entries: sc.entries[first:len(sc.entries):len(sc.entries)], Hits: hitsFor(req, d)}
		if o := d.GetLimit(); o != nil {
			sc.descs[i].Override = &Override{
				RequestsPerUnit: o.GetRequestsPerUnit(),
				Unit:            strings.ToLower(o.GetUnit().String()),
				UnitMultiplier:  o.GetUnitMultiplier().GetValue(),
			}
		}
	}
	over, err := s.engine.Check(ctx, req.Domain, sc.descs, sc.decisions)
	if err != nil {
		switch {
		case errors.Is(err, ErrInvalid):
			return nil, status.Error(codes.InvalidArgument, err.Error())
		case errors.Is(err, ErrStoreUnavailable):
			return nil, status.Error(codes.Unavailable, err.Error())
		case ctx.Err() != nil:
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp, blocks := newResponse(n)
	if over {
		resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	var report Decision
	for i := range sc.decisions {
		dec := &sc.decisions[i]
		resp.Statuses[i] = descriptorStatus(dec, &blocks[i])
		if dec.Rule != nil && dec.Rule.DetailedMetric {
			s.engine.CountDetailed(req.Domain, descriptorText(sc.descs[i].Entries), dec)
		}
		if dec.Limit != nil && tighter(&report, dec.Limit, dec.Result) {
			report = *dec
		}
		sc.decisions[i] = Decision{} // drop references before pooling
	}
	if report.Limit != nil && (s.headers.IETF || s.headers.XRateLimit) {
		resp.ResponseHeadersToAdd = s.headers.Append(nil, report.Limit, &report.Result)
	}
	return resp, nil
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// hitsFor resolves hits as Envoy defines them: the descriptor's own hits_addend when
// set (0 included: check without counting), else the request's, where 0 means 1.
// Negative hits (refunds) are not supported: such a descriptor is only checked.
func hitsFor(req *rlsv3.RateLimitRequest, d *rlcommon.RateLimitDescriptor) uint64 {
	if d.GetIsNegativeHits() {
		return 0
	}
	if h := d.GetHitsAddend(); h != nil {
		return h.GetValue()
	}
	if req.HitsAddend == 0 {
		return 1
	}
	return uint64(req.HitsAddend)
}

// statusBlock holds one descriptor status and the messages it points to, so that a
// status costs one allocation instead of three.
type statusBlock struct {
	st  rlsv3.RateLimitResponse_DescriptorStatus
	lim rlsv3.RateLimitResponse_RateLimit
	dur durationpb.Duration
}

// oneResponse is a whole one-descriptor response, Envoy's common case, in one allocation.
type oneResponse struct {
	resp     rlsv3.RateLimitResponse
	statuses [1]*rlsv3.RateLimitResponse_DescriptorStatus
	blocks   [1]statusBlock
}

// newResponse returns an OK response with room for n statuses, and the blocks to fill
// them from. The messages are never copied: they are filled in place and handed to gRPC.
func newResponse(n int) (*rlsv3.RateLimitResponse, []statusBlock) {
	if n == 1 {
		one := new(oneResponse)
		one.resp.OverallCode = rlsv3.RateLimitResponse_OK
		one.resp.Statuses = one.statuses[:]
		return &one.resp, one.blocks[:]
	}
	resp := &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses:    make([]*rlsv3.RateLimitResponse_DescriptorStatus, n),
	}
	return resp, make([]statusBlock, n)
}

// descriptorStatus fills b from dec and returns its status.
func descriptorStatus(dec *Decision, b *statusBlock) *rlsv3.RateLimitResponse_DescriptorStatus {
	st := &b.st
	st.Code = rlsv3.RateLimitResponse_OK
	if dec.Code == CodeOverLimit {
		st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	if dec.Limit == nil {
		return st
	}
	l := dec.Limit
	b.lim.Name = l.Name
	b.lim.RequestsPerUnit = l.RequestsPerUnit
	b.lim.Unit = unitProto(l.Unit)
	st.CurrentLimit = &b.lim
	if l.UnitMultiplier > 1 {
		st.CurrentLimit.UnitMultiplier = wrapperspb.UInt32(uint32(min(l.UnitMultiplier, 1<<32-1)))
	}
	st.LimitRemaining = uint32(min(dec.Result.Remaining, 1<<32-1))
	reset := dec.Result.ResetAfter
	if dec.Code == CodeOverLimit && dec.Result.RetryAfter > reset {
		reset = dec.Result.RetryAfter
	}
	// What durationpb.New computes, without its allocation.
	d := time.Duration(reset) * time.Microsecond
	b.dur.Seconds = int64(d / time.Second)
	b.dur.Nanos = int32(d % time.Second)
	st.DurationUntilReset = &b.dur
	return st
}

func unitProto(u string) rlsv3.RateLimitResponse_RateLimit_Unit {
	switch u {
	case "second":
		return rlsv3.RateLimitResponse_RateLimit_SECOND
	case "minute":
		return rlsv3.RateLimitResponse_RateLimit_MINUTE
	case "hour":
		return rlsv3.RateLimitResponse_RateLimit_HOUR
	case "day":
		return rlsv3.RateLimitResponse_RateLimit_DAY
	case "week":
		return rlsv3.RateLimitResponse_RateLimit_WEEK
	case "month":
		return rlsv3.RateLimitResponse_RateLimit_MONTH
	case "year":
		return rlsv3.RateLimitResponse_RateLimit_YEAR
	}
	return rlsv3.RateLimitResponse_RateLimit_UNKNOWN
}

// UnitFromProto maps Envoy's RateLimitUnit to the config's unit names.
func UnitFromProto(u typev3.RateLimitUnit) string { return strings.ToLower(u.String()) }

func descriptorText(entries []plans.Entry) string {
	var b strings.Builder
	for i, e := range entries {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e.Key)
		b.WriteByte('_')
		b.WriteString(e.Value)
	}
	return b.String()
}

// retryAfterSeconds rounds a wait up to whole seconds, as HTTP's Retry-After needs.
func retryAfterSeconds(us int64) int64 {
	if us <= 0 {
		return 0
	}
	return (us + 999_999) / 1_000_000
}

// Append adds the configured header families describing limit l and result r.
func (h HeaderFamilies) Append(dst []*corev3HeaderValue, l *plans.Limit, r *algorithms.Result) []*corev3HeaderValue {
	if l == nil {
		return dst
	}
	reset := r.ResetAfter
	if !r.Allowed && r.RetryAfter > reset {
		reset = r.RetryAfter
	}
	resetS := retryAfterSeconds(reset)
	windowS := retryAfterSeconds(l.Params.Period)
	if h.XRateLimit {
		dst = append(dst,
			header("X-RateLimit-Limit", itoa(r.Limit)),
			header("X-RateLimit-Remaining", itoa(r.Remaining)),
			header("X-RateLimit-Reset", itoa(resetS)),
		)
	}
	if h.IETF {
		name := policyName(l)
		dst = append(dst,
			header("RateLimit-Policy", `"`+name+`";q=`+itoa(r.Limit)+";w="+itoa(windowS)),
			header("RateLimit", `"`+name+`";r=`+itoa(r.Remaining)+";t="+itoa(resetS)),
		)
	}
	return dst
}
