package rlsv3

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
)

// Service implements envoy.service.ratelimit.v3.RateLimitService on an engine.Engine.
type Service struct {
	rlspb.UnimplementedRateLimitServiceServer
	engine  *engine.Engine
	headers headers.Families
	pool    sync.Pool // *callScratch
	// duration and ok are resolved once: two label lookups per call showed in profiles.
	duration prometheus.Observer
	ok       prometheus.Counter
	// dynamicMetadata: every response carries the reference's dynamic metadata.
	dynamicMetadata bool
}

// Option changes a Service.
type Option func(*Service)

// DynamicMetadata makes every response carry the reference's dynamic metadata
// (RESPONSE_DYNAMIC_METADATA): the call's domain, descriptors and hits, its quota-mode
// violations, and the metadata of the rules the call's descriptors matched and passed.
// Envoy stores it under the filter's namespace (envoy.filters.http.ratelimit).
func DynamicMetadata() Option { return func(s *Service) { s.dynamicMetadata = true } }

// NewService returns the gRPC service.
func NewService(e *engine.Engine, headers headers.Families, opts ...Option) *Service {
	s := &Service{engine: e, headers: headers}
	for _, o := range opts {
		o(s)
	}
	s.pool.New = func() any { return new(callScratch) }
	m := e.Metrics()
	s.duration = m.RequestDuration.WithLabelValues("ShouldRateLimit")
	s.ok = m.Requests.WithLabelValues("ShouldRateLimit", codes.OK.String())
	return s
}

type callScratch struct {
	descs     []engine.Descriptor
	decisions []engine.Decision
	entries   []config.Entry
}

// ShouldRateLimit decides a call from Envoy's rate-limit filter.
func (s *Service) ShouldRateLimit(ctx context.Context, req *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	start := time.Now()
	resp, err := s.shouldRateLimit(ctx, req)
	s.duration.Observe(time.Since(start).Seconds())
	if err == nil {
		s.ok.Inc()
	} else {
		s.engine.Metrics().Requests.WithLabelValues("ShouldRateLimit", status.Code(err).String()).Inc()
	}
	return resp, err
}

func (s *Service) shouldRateLimit(ctx context.Context, req *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	if n := len(req.Descriptors); n > s.engine.Bounds().MaxDescriptors {
		// Refuse before converting anything: a hostile call must not cost its size.
		s.engine.Metrics().Rejected.WithLabelValues("invalid_argument").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "%d descriptors in one request, the limit is %d", n, s.engine.Bounds().MaxDescriptors)
	}
	sc := s.pool.Get().(*callScratch)
	defer s.pool.Put(sc)
	n := len(req.Descriptors)
	sc.descs = grow(sc.descs, n)
	sc.decisions = grow(sc.decisions, n)
	total := 0
	for i, d := range req.Descriptors {
		if k := len(d.GetEntries()); k > s.engine.Bounds().MaxEntries {
			return nil, status.Errorf(codes.InvalidArgument, "invalid request: descriptor %d has %d entries, the limit is %d", i, k, s.engine.Bounds().MaxEntries)
		}
		total += len(d.GetEntries())
	}
	sc.entries = grow(sc.entries, total)[:0]
	for i, d := range req.Descriptors {
		first := len(sc.entries)
		for _, en := range d.GetEntries() {
			sc.entries = append(sc.entries, config.Entry{Key: en.GetKey(), Value: en.GetValue()})
		}
		hits := hitsFor(req, d)
		// A call of 0 hits is Envoy's check before the request: refused when a request of
		// 1 hit would be, so a budget at zero refuses the next request.
		sc.descs[i] = engine.Descriptor{Entries: sc.entries[first:len(sc.entries):len(sc.entries)], Hits: hits, Refund: d.GetIsNegativeHits(), NeedsUnit: hits == 0}
		if o := d.GetLimit(); o != nil {
			sc.descs[i].Override = &engine.Override{
				RequestsPerUnit: o.GetRequestsPerUnit(),
				Unit:            strings.ToLower(o.GetUnit().String()),
				UnitMultiplier:  o.GetUnitMultiplier().GetValue(),
			}
		}
	}
	over, err := s.engine.Check(ctx, req.Domain, sc.descs, sc.decisions)
	if err != nil {
		switch {
		case errors.Is(err, engine.ErrInvalid):
			return nil, status.Error(codes.InvalidArgument, err.Error())
		case errors.Is(err, engine.ErrStoreUnavailable):
			return nil, status.Error(codes.Unavailable, err.Error())
		case ctx.Err() != nil:
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp, blocks := newResponse(n)
	if over {
		resp.OverallCode = rlspb.RateLimitResponse_OVER_LIMIT
	}
	if s.dynamicMetadata {
		resp.DynamicMetadata = dynamicMetadata(req, sc.decisions)
	}
	var report engine.Decision
	idem := engine.IdemNone
	for i := range sc.decisions {
		dec := &sc.decisions[i]
		if dec.Idempotency.Refuses() {
			idem = dec.Idempotency
		}
		resp.Statuses[i] = descriptorStatus(dec, &blocks[i])
		if dec.Rule != nil && dec.Rule.DetailedMetric {
			s.engine.CountDetailed(req.Domain, descriptorText(sc.descs[i].Entries), dec)
		}
		if dec.Limit != nil && engine.Tighter(&report, dec.Limit, dec.Result) {
			report = *dec
		}
		sc.decisions[i] = engine.Decision{} // drop references before pooling
	}
	if report.Limit != nil && s.headers.Any() {
		resp.ResponseHeadersToAdd = appendHeaders(nil, s.headers, report.Rule, report.Limit, &report.Result)
	}
	if idem != engine.IdemNone {
		// An idempotency key reused by another request, or whose first request is still
		// being decided: OVER_LIMIT, and this header says why (docs/config.md).
		resp.ResponseHeadersToAdd = appendIdempotency(resp.ResponseHeadersToAdd, idem)
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
// set (0 included: check without counting), else the request's, where 0 means 1. With
// is_negative_hits they are given back (engine.Descriptor.Refund).
func hitsFor(req *rlspb.RateLimitRequest, d *rlcommon.RateLimitDescriptor) uint64 {
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
	st  rlspb.RateLimitResponse_DescriptorStatus
	lim rlspb.RateLimitResponse_RateLimit
	dur durationpb.Duration
}

// oneResponse is a whole one-descriptor response, Envoy's common case, in one allocation.
type oneResponse struct {
	resp     rlspb.RateLimitResponse
	statuses [1]*rlspb.RateLimitResponse_DescriptorStatus
	blocks   [1]statusBlock
}

// newResponse returns an OK response with room for n statuses, and the blocks to fill
// them from. The messages are never copied: they are filled in place and handed to gRPC.
func newResponse(n int) (*rlspb.RateLimitResponse, []statusBlock) {
	if n == 1 {
		one := new(oneResponse)
		one.resp.OverallCode = rlspb.RateLimitResponse_OK
		one.resp.Statuses = one.statuses[:]
		return &one.resp, one.blocks[:]
	}
	if n <= len(fewResponse{}.statuses) {
		// The response and its status slice together; the blocks, of n's size, apart.
		few := new(fewResponse)
		few.resp.OverallCode = rlspb.RateLimitResponse_OK
		few.resp.Statuses = few.statuses[:n:n]
		return &few.resp, make([]statusBlock, n)
	}
	resp := &rlspb.RateLimitResponse{
		OverallCode: rlspb.RateLimitResponse_OK,
		Statuses:    make([]*rlspb.RateLimitResponse_DescriptorStatus, n),
	}
	return resp, make([]statusBlock, n)
}

// fewResponse is a response of up to 8 descriptors (most routes send a few) with its
// status slice, in one allocation: the slice's room costs 8 pointers, not 8 blocks.
type fewResponse struct {
	resp     rlspb.RateLimitResponse
	statuses [8]*rlspb.RateLimitResponse_DescriptorStatus
}

// descriptorStatus fills b from dec and returns its status.
func descriptorStatus(dec *engine.Decision, b *statusBlock) *rlspb.RateLimitResponse_DescriptorStatus {
	st := &b.st
	st.Code = rlspb.RateLimitResponse_OK
	if dec.Code == engine.CodeOverLimit {
		st.Code = rlspb.RateLimitResponse_OVER_LIMIT
	}
	if dec.Limit == nil {
		if dec.Rule != nil && dec.Rule.Unlimited {
			// The reference's answer for an unlimited descriptor: OK, and as much room as
			// the field holds.
			st.LimitRemaining = math.MaxUint32
		}
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
	// The same wait as the rate-limit headers' reset: Envoy's X-RateLimit-Reset
	// (enable_x_ratelimit_headers) is made from it.
	// What durationpb.New computes, without its allocation.
	d := time.Duration(dec.Result.Wait()) * time.Microsecond
	b.dur.Seconds = int64(d / time.Second)
	b.dur.Nanos = int32(d % time.Second)
	st.DurationUntilReset = &b.dur
	return st
}

func unitProto(u string) rlspb.RateLimitResponse_RateLimit_Unit {
	switch u {
	case "second":
		return rlspb.RateLimitResponse_RateLimit_SECOND
	case "minute":
		return rlspb.RateLimitResponse_RateLimit_MINUTE
	case "hour":
		return rlspb.RateLimitResponse_RateLimit_HOUR
	case "day":
		return rlspb.RateLimitResponse_RateLimit_DAY
	case "week":
		return rlspb.RateLimitResponse_RateLimit_WEEK
	case "month":
		return rlspb.RateLimitResponse_RateLimit_MONTH
	case "year":
		return rlspb.RateLimitResponse_RateLimit_YEAR
	}
	return rlspb.RateLimitResponse_RateLimit_UNKNOWN
}

// UnitFromProto maps Envoy's RateLimitUnit to the config's unit names.
func UnitFromProto(u typev3.RateLimitUnit) string { return strings.ToLower(u.String()) }

// descriptorText is the descriptor as a metric label: key_value pairs joined by dots,
// with bytes that are not UTF-8 (a Prometheus label must be) replaced by U+FFFD.
func descriptorText(entries []config.Entry) string {
	var b strings.Builder
	for i, e := range entries {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e.Key)
		b.WriteByte('_')
		b.WriteString(e.Value)
	}
	return strings.ToValidUTF8(b.String(), "\uFFFD")
}
