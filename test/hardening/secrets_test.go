package hardening

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// secret is in every secret a test hands the binary; it must come out nowhere.
const secret = "S3CRETxyz"

// TestStoreSecretsInQueryOptions: secrets in store-URL query options (not only
// user:password@) never come out: not in the log, /config, /metrics, /readyz, a /json
// answer, pprof's command line (on the admin port, and on the HTTP port behind the admin
// token), nor in the error of a start-up that fails, for every store's secret options.
func TestStoreSecretsInQueryOptions(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		admin := testutil.FreeAddr(t)
		token := "tok-" + secret
		p := start(t, nil,
			"--store", "redis+sentinel://127.0.0.1:1/0?master=m&sentinel_password=sp-"+secret,
			"--store-timeout", "50ms", "--admin-addr", admin, "--admin-token", token)
		var all strings.Builder
		cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := rlspb.NewRateLimitServiceClient(cc).ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "edge",
			Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "u"}}}}})
		all.WriteString(resp.String())
		if err != nil {
			all.WriteString(err.Error())
		}
		for _, path := range []string{"/config", "/metrics", "/readyz", "/healthz", "/healthcheck", "/debug/pprof/cmdline"} {
			_, b, _ := get(t, "http://"+p.HTTPAddr+path)
			all.WriteString(b)
		}
		r, err := client.Post("http://"+p.HTTPAddr+"/json", "application/json",
			strings.NewReader(`{"domain":"edge","descriptors":[{"entries":[{"key":"user","value":"u"}]}]}`))
		if err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			all.Write(b)
		}
		code, cmdline, _ := get(t, "http://"+admin+"/debug/pprof/cmdline")
		if code != http.StatusOK || !strings.Contains(cmdline, "sentinel_password=xxxxx") || !strings.Contains(cmdline, "--admin-token\x00xxxxx") {
			t.Fatalf("pprof cmdline on the admin port: %d %q", code, cmdline)
		}
		all.WriteString(cmdline)
		time.Sleep(200 * time.Millisecond) // the store's failures reach the log
		all.WriteString(p.Log.String())
		if out := all.String(); strings.Contains(out, secret) {
			t.Fatalf("a secret came out:\n%s", out)
		}
		if !strings.Contains(p.Log.String(), "redis+sentinel") {
			t.Fatalf("the log does not name the store: the test checks nothing:\n%s", p.Log.String())
		}
	})
	t.Run("pprof on the HTTP port needs the admin token", func(t *testing.T) {
		token := "tok-" + secret
		p := start(t, nil, "--store", "memory://", "--admin-token", token)
		if code, _, _ := get(t, "http://"+p.HTTPAddr+"/debug/pprof/cmdline"); code != http.StatusUnauthorized {
			t.Fatalf("pprof without the token: %d, want 401", code)
		}
		code, b, _ := get(t, "http://"+p.HTTPAddr+"/debug/pprof/cmdline", "Authorization", "Bearer "+token)
		if code != http.StatusOK || strings.Contains(b, secret) || !strings.Contains(b, "xxxxx") {
			t.Fatalf("pprof with the token: %d %q", code, b)
		}
		p2 := start(t, nil, "--store", "memory://")
		if code, _, _ := get(t, "http://"+p2.HTTPAddr+"/debug/pprof/"); code != http.StatusNotFound {
			t.Fatalf("pprof on the HTTP port without an admin token or port: %d, want 404", code)
		}
		if !strings.Contains(p2.Log.String(), `pprof="off: set --admin-addr`) {
			t.Fatalf("the start-up log does not say where pprof is:\n%s", p2.Log.String())
		}
	})
	t.Run("start-up errors", func(t *testing.T) {
		dir := configDir(t)
		for _, store := range []string{
			"redis+sentinel://127.0.0.1:1/0?master=m&sentinel_password=" + secret + "&bogus=1",
			"redis+sentinel://127.0.0.1:1/0?master=m&sentinel_password=" + secret + "%zz",
			"redis+sentinel://127.0.0.1:bad/0?master=m&sentinel_password=" + secret,
			"postgres://u@127.0.0.1:1/db?password=" + secret + "&sslmode=bogus",
			"postgres://u@127.0.0.1:1/db?password=" + secret + "&sslpassword=k" + secret + "&connect_timeout=1",
			"postgres://u@127.0.0.1:bad/db?password=" + secret,
			"mongodb://127.0.0.1:1/halt?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:" + secret + "&setup_timeout=300ms",
			"mongodb://127.0.0.1:1/halt?tls=true&tlsCertificateKeyFilePassword=" + secret + "&bogus=1",
			"mongodb://127.0.0.1:1/halt?tlsCertificateKeyFilePassword=" + secret + "&setup_timeout=300ms",
			"dynamodb://t?endpoint=http://127.0.0.1:1&region=x&access_key_id=a&secret_access_key=" + secret + "&setup_timeout=300ms",
			"dynamodb://t?region=x&access_key_id=a&secret_access_key=" + secret + "&bogus=1",
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			cmd := exec.CommandContext(ctx, testutil.Binary(t), "--config", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
				"--store-timeout", "200ms", "--store", store)
			cmd.Env = testutil.EnvWithoutHalt()
			out, err := cmd.CombinedOutput()
			timedOut := ctx.Err() != nil
			cancel()
			if err == nil || timedOut {
				t.Errorf("%s: want a failed start, got %v (timed out: %v)", store, err, timedOut)
			}
			if strings.Contains(string(out), secret) {
				t.Errorf("%s: the secret is in the output:\n%s", store, out)
			}
			if !strings.Contains(string(out), "level=ERROR") {
				t.Errorf("%s: no error message:\n%s", store, out)
			}
		}
	})
}
