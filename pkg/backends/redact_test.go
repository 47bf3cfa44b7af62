package backends

import (
	"errors"
	"fmt"
	"net/url"
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
		// A raw '@' or '/' in a password: masked whole.
		"redis://u:p@ss@h:1/0": "redis://u:xxxxx@h:1/0",
		"redis://u:pa/ss@h:1":  "redis://u:xxxxx@h:1",
		// Secret query options of every store, any case, encoded names too.
		"redis+sentinel://h:26379/0?master=m&sentinel_password=S3&sentinel_username=u":        "redis+sentinel://h:26379/0?master=m&sentinel_password=xxxxx&sentinel_username=u",
		"postgres://u@db/halt?password=S3&sslmode=require":                                    "postgres://u@db/halt?password=xxxxx&sslmode=require",
		"postgres://u@db/halt?sslpassword=S3":                                                 "postgres://u@db/halt?sslpassword=xxxxx",
		"postgres://u@db/halt?pass%77ord=S3":                                                  "postgres://u@db/halt?pass%77ord=xxxxx",
		"dynamodb://t?region=eu-west-1&access_key_id=AK&secret_access_key=S3":                 "dynamodb://t?region=eu-west-1&access_key_id=AK&secret_access_key=xxxxx",
		"mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:S3": "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=xxxxx",
		"mongodb://h/?tls=true&TLSCertificateKeyFilePassword=S3#frag":                         "mongodb://h/?tls=true&TLSCertificateKeyFilePassword=xxxxx#frag",
		// In text: a log line, a quoted error (the value runs to the quote, its escape
		// included: a backslash may be part of a secret).
		`err="parse \"redis+sentinel://h/0?sentinel_password=S3\": bad" next=1`: `err="parse \"redis+sentinel://h/0?sentinel_password=xxxxx": bad" next=1`,
		"open redis://u:S3@h/0 failed":                                          "open redis://u:xxxxx@h/0 failed",
	} {
		if got := RedactURLs(in); got != want {
			t.Errorf("RedactURLs(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}

func TestURLSecrets(t *testing.T) {
	got := URLSecrets("postgres://u:p%40ss@db/halt?password=second&sslmode=require&sslpassword=x")
	want := []string{"p%40ss", "second", "p@ss"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("URLSecrets = %q, want %q (longest first; 'x' too short to mask)", got, want)
	}
}

func TestRedact(t *testing.T) {
	if Redact(nil) != nil {
		t.Fatal("Redact(nil) is not nil")
	}
	//lint:ignore SA1007 the URL is invalid on purpose: the url.Error it gives must be redacted
	_, perr := url.Parse("redis+sentinel://h:bad/0?sentinel_password=S3CRET")
	err := fmt.Errorf("open: %w: %w", ErrUnavailable, perr)
	red := Redact(err)
	if strings.Contains(red.Error(), "S3CRET") || !strings.Contains(red.Error(), "sentinel_password=xxxxx") {
		t.Fatalf("Redact: %q", red)
	}
	var ue *url.Error
	if !errors.Is(red, ErrUnavailable) || !errors.As(red, &ue) {
		t.Fatal("the redacted error lost its chain")
	}
	plain := errors.New("no url here")
	if Redact(plain) != plain {
		t.Fatal("an error without a URL was wrapped")
	}
}
