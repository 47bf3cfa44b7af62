package all

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// notSecret are the options whose name sounds secret but whose value is not, and why.
var notSecret = map[string]string{
	"tls_key":           "a file path (the key stays in the file)",
	"tls_cert":          "a file path",
	"access_key_id":     "an identifier AWS prints in its own logs; the secret is secret_access_key",
	"sentinel_username": "a user name",
}

// TestSecretOptionsComplete asks every store for its options (the unknown-option error
// lists them) and requires each secret-sounding one to be masked by
// backends.RedactURLs, or listed in notSecret with a reason. The drivers' own secret
// options (pgx, the MongoDB driver) are listed by hand in backends.SecretOptions; this
// test checks they are masked.
func TestSecretOptionsComplete(t *testing.T) {
	secretish := regexp.MustCompile(`(?i)pass|secret|token|(^|_)key($|_)|auth|cred`)
	list := regexp.MustCompile(`valid options: ([a-z_, ]+)|neither halt \(([a-z_, ]+)\)`)
	secret := backends.SecretOptions()
	for _, u := range []string{
		"memory://?zz_unknown=1",
		"redis://127.0.0.1:1/0?zz_unknown=1",
		"rediss://127.0.0.1:1/0?zz_unknown=1",
		"redis+sentinel://127.0.0.1:1/0?master=m&zz_unknown=1",
		"redis+cluster://127.0.0.1:1?zz_unknown=1",
		"memcached://127.0.0.1:1?zz_unknown=1",
		"mongodb://127.0.0.1:1/halt?zz_unknown=1",
		"dynamodb://t?zz_unknown=1",
	} {
		_, err := Open(context.Background(), u, backends.Options{})
		if err == nil {
			t.Fatalf("%s opened", u)
		}
		m := list.FindStringSubmatch(err.Error())
		if m == nil {
			t.Fatalf("%s: no option list in %q", u, err)
		}
		for _, opt := range strings.Split(m[1]+m[2], ", ") {
			if !secretish.MatchString(opt) || slices.Contains(secret, opt) {
				continue
			}
			if _, ok := notSecret[opt]; !ok {
				t.Errorf("%s: option %q sounds secret: add it to backends.SecretOptions (masked) or to notSecret here (why not)", u, opt)
			}
		}
	}
	for _, driverOpt := range []string{"password", "sslpassword", "authMechanismProperties", "tlsCertificateKeyFilePassword"} {
		if got := backends.RedactURLs("x://h/?" + driverOpt + "=S3CRET"); strings.Contains(got, "S3CRET") {
			t.Errorf("driver option %s is not masked: %s", driverOpt, got)
		}
	}
}
