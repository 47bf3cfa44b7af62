package backends

import (
	"net/url"
	"slices"
	"strings"
)

// Masked replaces every secret that redaction removes.
const Masked = "xxxxx"

// secretOptions are the store-URL query options, of every store, that carry a secret:
// halt's own and those its drivers read from the URL. Lower case: drivers read some
// case-insensitively (MongoDB), so the match ignores case. TestSecretOptionsComplete (in
// pkg/backends/all) fails while a store takes a secret-sounding option not listed here
// or in notSecret.
var secretOptions = []string{
	"sentinel_password",               // redis+sentinel://
	"password",                        // postgres:// (pgx)
	"sslpassword",                     // postgres:// (pgx): the client key's passphrase
	"secret_access_key",               // dynamodb://
	"authmechanismproperties",         // mongodb:// (may hold AWS_SESSION_TOKEN)
	"tlscertificatekeyfilepassword",   // mongodb://
	"sslclientcertificatekeypassword", // mongodb:// (the old name of the above)
}

// SecretOptions returns the query options whose values redaction masks, in lower case.
func SecretOptions() []string { return slices.Clone(secretOptions) }

func isSecretOption(name string) bool {
	if k, err := url.QueryUnescape(name); err == nil {
		name = k // an option read decoded ("pass%77ord") is masked as the driver reads it
	}
	return slices.Contains(secretOptions, strings.ToLower(name))
}

// RedactURLs returns s with the secrets of every store URL in it masked: the password of
// "user:password@" and the value of every secret query option (SecretOptions). s may be
// anything holding URLs: one URL, a command-line argument, several URLs separated by
// commas, a log line or an error message. It errs on the side of masking: a URL's
// extent ends only at white space, a double quote or the next URL's scheme, and its user
// info at the last '@' in it, so a password with a raw '/' or '@' is masked whole.
func RedactURLs(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		end := urlEnd(s)
		b.WriteString(redactOne(s[:end]))
		s = s[end:]
	}
}

// urlEnd is where the URL whose text follows "://" at the start of s ends: white space, a
// double quote, or the scheme of the next URL.
func urlEnd(s string) int {
	end := len(s)
	if j := strings.IndexAny(s, " \t\r\n\""); j >= 0 {
		end = j
	}
	if j := strings.Index(s[:end], "://"); j >= 0 {
		k := j
		for k > 0 && isSchemeChar(s[k-1]) {
			k--
		}
		end = k
	}
	return end
}

func isSchemeChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'
}

// redactOne masks one URL's secrets; u is its text after "://".
func redactOne(u string) string {
	if at := strings.LastIndexByte(u, '@'); at >= 0 {
		if c := strings.IndexByte(u[:at], ':'); c >= 0 {
			u = u[:c+1] + Masked + u[at:]
		}
	}
	q := strings.IndexByte(u, '?')
	if q < 0 {
		return u
	}
	var b strings.Builder
	b.WriteString(u[:q+1])
	rest := u[q+1:]
	for first := true; ; first = false {
		if !first {
			b.WriteByte('&')
		}
		pair, more, found := strings.Cut(rest, "&")
		name, _, hasValue := strings.Cut(pair, "=")
		if hasValue && isSecretOption(name) {
			b.WriteString(name + "=" + Masked)
			if h := strings.IndexByte(pair, '#'); h > len(name) {
				b.WriteString(pair[h:]) // the fragment is not the value's
			}
		} else {
			b.WriteString(pair)
		}
		if !found {
			return b.String()
		}
		rest = more
	}
}

// URLSecrets returns the secret values a store URL carries (the user-info password and
// the values of secret options, as written and decoded), longest first, for masking them
// wherever they may show up: in a driver's error or log line that quotes a value without
// its URL.
func URLSecrets(raw string) []string {
	var out []string
	add := func(v string) {
		if len(v) >= 3 && !slices.Contains(out, v) { // shorter ones would mask half the log
			out = append(out, v)
		}
		if d, err := url.QueryUnescape(v); err == nil && d != v && len(d) >= 3 && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if i := strings.Index(raw, "://"); i >= 0 {
		rest := raw[i+3:]
		rest = rest[:urlEnd(rest)]
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			if c := strings.IndexByte(rest[:at], ':'); c >= 0 {
				add(rest[c+1 : at])
			}
		}
		if q := strings.IndexByte(rest, '?'); q >= 0 {
			query, _, _ := strings.Cut(rest[q+1:], "#")
			for _, pair := range strings.Split(query, "&") {
				if name, v, ok := strings.Cut(pair, "="); ok && isSecretOption(name) {
					add(v)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// Redact returns err with the secrets of every store URL in its text masked
// (RedactURLs): url.Error and drivers' errors quote whole URLs, and a mistyped store URL
// must never print its secret into logs. errors.Is and errors.As still see err's chain;
// a nil err stays nil.
func Redact(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	red := RedactURLs(msg)
	if red == msg {
		return err
	}
	return &redacted{msg: red, err: err}
}

// redacted is an error with a masked text over the original chain.
type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }

// Unwrap gives errors.Is and errors.As the original chain. Its texts are not masked:
// print the redacted error, never what it unwraps to.
func (r *redacted) Unwrap() error { return r.err }
