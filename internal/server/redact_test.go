package server

import (
	"strings"
	"testing"
)

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"--store":               "--store",
		"redis://user:pw@h:1/0": "redis://user:xxxxx@h:1/0",
		"redis://:pw@h:1/0":     "redis://:xxxxx@h:1/0",
		"redis://user@h:1/0":    "redis://user@h:1/0",
		"postgres://u:p:q@db/x?sslmode=verify-full": "postgres://u:xxxxx@db/x?sslmode=verify-full",
		"http://h/path@x":                            "http://h/path@x",
		"--store=redis://a:b@h/0,redis://c:d@h/1":    "--store=redis://a:xxxxx@h/0,redis://c:xxxxx@h/1",
		"mongodb://u:p@h1,h2/?tls=true&authSource=a": "mongodb://u:xxxxx@h1,h2/?tls=true&authSource=a",
	} {
		if got := RedactURLs(in); got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactArgs(t *testing.T) {
	in := []string{"halt-envoy", "--admin-token", "s3cret", "-admin-token=s3cret2", "--store", "redis://u:pw@h:1/0", "--config", "x"}
	got := strings.Join(RedactArgs(in), " ")
	for _, secret := range []string{"s3cret", "pw@"} {
		if strings.Contains(got, secret) {
			t.Fatalf("%q leaks %q", got, secret)
		}
	}
	if !strings.Contains(got, "--config x") || !strings.Contains(got, "-admin-token=xxxxx") {
		t.Fatalf("over-redacted: %q", got)
	}
}
