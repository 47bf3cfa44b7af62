// Package redact keeps secrets out of what halt-envoy prints: the command line that
// /debug/pprof/cmdline serves, and every log line. Store URLs are masked by the one
// function that knows every store's secrets, backends.RedactURLs; this package applies it
// (and the values of secret flags) where text leaves the process.
package redact

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// secretFlags take a secret as their value: it never leaves the process.
var secretFlags = []string{"admin-token"}

// Args returns a command line with the secrets of store URLs (backends.RedactURLs) and
// the values of secret flags (--admin-token X, --admin-token=X) masked.
func Args(in []string) []string {
	out := make([]string, len(in))
	hideNext := false
	for i, a := range in {
		if hideNext {
			out[i], hideNext = backends.Masked, false
			continue
		}
		out[i] = backends.RedactURLs(a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !slices.Contains(secretFlags, name) {
			continue
		}
		if hasValue {
			out[i] = a[:strings.Index(a, "=")+1] + backends.Masked
		} else {
			hideNext = true
		}
	}
	return out
}

// Text returns s with store URLs' secrets masked and every one of secrets replaced.
func Text(s string, secrets []string) string {
	s = backends.RedactURLs(s)
	for _, v := range secrets {
		if v != "" && strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, backends.Masked)
		}
	}
	return s
}

// Handler masks secrets in every record it passes on: store URLs' secrets
// (backends.RedactURLs) and the given values (the configured store URL's password and
// secret options, the admin token) wherever a driver or an error quotes them without
// their URL. Strings, errors and anything printed with %v are masked; numbers, times and
// booleans pass as they are.
type Handler struct {
	next    slog.Handler
	secrets []string
}

// NewHandler returns next behind the masking. secrets shorter than 3 bytes are ignored
// (they would mask half the log); pass backends.URLSecrets of the store URL.
func NewHandler(next slog.Handler, secrets ...string) *Handler {
	var keep []string
	for _, s := range secrets {
		if len(s) >= 3 && !slices.Contains(keep, s) {
			keep = append(keep, s)
		}
	}
	// Longest first, so a secret containing another is masked whole.
	slices.SortFunc(keep, func(a, b string) int { return len(b) - len(a) })
	return &Handler{next: next, secrets: keep}
}

// Enabled reports whether next handles level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle masks r's message and attributes, then passes it on.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, Text(r.Message, h.secrets), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs masks attrs once, when they are bound.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	masked := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		masked[i] = h.attr(a)
	}
	return &Handler{next: h.next.WithAttrs(masked), secrets: h.secrets}
}

// WithGroup opens a group on next.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), secrets: h.secrets}
}

func (h *Handler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, Text(v.String(), h.secrets))
	case slog.KindGroup:
		g := v.Group()
		masked := make([]any, len(g))
		for i, ga := range g {
			masked[i] = h.attr(ga)
		}
		return slog.Group(a.Key, masked...)
	case slog.KindAny:
		var s string
		switch x := v.Any().(type) {
		case error:
			s = x.Error()
		case fmt.Stringer:
			s = x.String()
		default:
			s = fmt.Sprint(x)
		}
		if m := Text(s, h.secrets); m != s {
			return slog.String(a.Key, m)
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
