package ratelimit

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/halt-envoy/halt-envoy/pkg/plans"
)

type corev3HeaderValue = corev3.HeaderValue

func header(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, Value: v} }

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// policyName returns the limit's name as a structured-field string body: the draft's
// policy identifier. Characters outside printable ASCII, quotes and backslashes are
// dropped so that a config name can never break the header's syntax.
func policyName(l *plans.Limit) string {
	name := l.Name
	if name == "" {
		name = "default"
	}
	b := make([]byte, 0, len(name))
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		return "default"
	}
	return string(b)
}
