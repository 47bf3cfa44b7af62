package rlsv3

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// appendHeaders adds the header families f describing limit l of rule and result r.
func appendHeaders(dst []*corev3.HeaderValue, f headers.Families, rule *config.Rule, l *config.Limit, r *algorithms.Result) []*corev3.HeaderValue {
	v, ok := headers.Of(rule, l, r)
	if !ok {
		return dst
	}
	f.Render(&v, func(k, val string) { dst = append(dst, &corev3.HeaderValue{Key: k, Value: val}) })
	return dst
}

// IdempotencyHeader names what an idempotency key did to a refused call: "conflict" (the
// key was first used by another request) or "in-progress" (its first request is still
// being decided).
const IdempotencyHeader = "halt-idempotency"

func appendIdempotency(dst []*corev3.HeaderValue, idem engine.Idempotency) []*corev3.HeaderValue {
	return append(dst, &corev3.HeaderValue{Key: IdempotencyHeader, Value: idem.String()})
}
