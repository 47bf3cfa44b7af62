package rlsv3

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// appendHeaders adds the header families f describing limit l and result r.
func appendHeaders(dst []*corev3.HeaderValue, f headers.Families, l *config.Limit, r *algorithms.Result) []*corev3.HeaderValue {
	if l == nil {
		return dst
	}
	v := headers.Of(l, r)
	f.Render(&v, func(k, val string) { dst = append(dst, &corev3.HeaderValue{Key: k, Value: val}) })
	return dst
}
