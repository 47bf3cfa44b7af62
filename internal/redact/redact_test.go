package redact

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	in := []string{"halt-envoy", "--admin-token", "s3cret", "-admin-token=s3cret2", "--store", "redis://u:pw@h:1/0",
		"--store=redis+sentinel://h:26379/0?master=m&sentinel_password=sentpw", "--config", "x"}
	got := strings.Join(Args(in), " ")
	for _, secret := range []string{"s3cret", "pw@", "sentpw"} {
		if strings.Contains(got, secret) {
			t.Fatalf("%q leaks %q", got, secret)
		}
	}
	if !strings.Contains(got, "--config x") || !strings.Contains(got, "-admin-token=xxxxx") || !strings.Contains(got, "master=m&sentinel_password=xxxxx") {
		t.Fatalf("over-redacted: %q", got)
	}
}

type stringer struct{ s string }

func (s stringer) String() string { return s.s }

// TestHandler: every kind of attribute, bound attributes, groups and the message are
// masked, in text and JSON; other values pass unchanged.
func TestHandler(t *testing.T) {
	for _, json := range []bool{false, true} {
		var buf bytes.Buffer
		var next slog.Handler = slog.NewTextHandler(&buf, nil)
		if json {
			next = slog.NewJSONHandler(&buf, nil)
		}
		log := slog.New(NewHandler(next, "tok3n-value", "ab"))
		log = log.With("bound", "postgres://u@db/x?password=P1")
		log.Info("open redis://u:P2@h/0",
			"err", errors.New("driver: bad value AWS:tok3n-value"),
			"url", stringer{"mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:P3"},
			"list", []string{"dynamodb://t?secret_access_key=P4"},
			slog.Group("g", "inner", "redis+sentinel://h/0?sentinel_password=P5"),
			"n", 42, "ab", "ab")
		out := buf.String()
		for _, s := range []string{"P1", "P2", "tok3n-value", "P3", "P4", "P5"} {
			if strings.Contains(out, s) {
				t.Errorf("json=%v: %q leaked:\n%s", json, s, out)
			}
		}
		if !strings.Contains(out, "42") || !strings.Contains(out, "ab") {
			t.Errorf("json=%v: over-masked:\n%s", json, out)
		}
	}
}
