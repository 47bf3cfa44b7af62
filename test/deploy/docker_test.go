package deploy_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// dockerfile returns the Dockerfile's instructions, continuation lines joined.
func dockerfile(t *testing.T) []string {
	t.Helper()
	var out []string
	var cur string
	for _, line := range strings.Split(string(mustRead(t, repo("Dockerfile"))), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		out = append(out, cur+trimmed)
		cur = ""
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := dockerfile(t)
	var froms []string
	stage := -1
	final := map[string][]string{} // instruction -> lines, in the last stage
	var build []string
	for _, l := range ins {
		word := strings.ToUpper(strings.Fields(l)[0])
		if word == "FROM" {
			froms = append(froms, l)
			stage++
			final = map[string][]string{}
			continue
		}
		if stage == 0 {
			build = append(build, l)
		}
		final[word] = append(final[word], l)
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got FROM lines %q", froms)
	}
	if !regexp.MustCompile(`^FROM (--platform=\S+ )?golang:1\.26\S* AS build$`).MatchString(froms[0]) {
		t.Errorf("builder stage %q: want golang:1.26 AS build", froms[0])
	}
	if froms[len(froms)-1] != "FROM gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("runtime stage %q: want gcr.io/distroless/static-debian12:nonroot", froms[len(froms)-1])
	}
	joined := strings.Join(build, "\n")
	for _, want := range []string{"ARG VERSION", "CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "./cmd/halt-envoy"} {
		if !strings.Contains(joined, want) {
			t.Errorf("build stage lacks %q", want)
		}
	}
	check := func(word, want string) {
		t.Helper()
		for _, l := range final[word] {
			if l == want {
				return
			}
		}
		t.Errorf("runtime stage lacks %q (has %q)", want, final[word])
	}
	check("USER", "USER nonroot:nonroot")
	check("COPY", "COPY config /etc/halt-envoy/config")
	check("ENV", "ENV HALT_CONFIG=/etc/halt-envoy/config")
	check("EXPOSE", "EXPOSE 8080 8081")
	check("ENTRYPOINT", `ENTRYPOINT ["/usr/local/bin/halt-envoy"]`)
	if len(final["HEALTHCHECK"]) != 1 || !strings.HasSuffix(final["HEALTHCHECK"][0],
		`CMD ["/usr/local/bin/halt-envoy", "probe", "--url", "http://127.0.0.1:8080/healthz"]`) {
		t.Errorf("HEALTHCHECK = %q: want the exec form of halt-envoy probe (distroless has no shell)", final["HEALTHCHECK"])
	}
	for _, l := range final["RUN"] {
		t.Errorf("runtime stage runs %q: distroless has no shell", l)
	}

	// The binary really has what the image relies on: the probe subcommand against
	// /healthz, the version stamp, and the baked-in config validates.
	bin := haltBinary(t)
	h := startHalt(t, repo("config"))
	if out, err := exec.Command(bin, "probe", "--url", "http://"+h.HTTPAddr+"/healthz").CombinedOutput(); err != nil {
		t.Errorf("halt-envoy probe: %v\n%s", err, out)
	}
	if err := exec.Command(bin, "probe", "--url", "http://"+h.HTTPAddr+"/nope").Run(); err == nil {
		t.Error("halt-envoy probe succeeds on a 404")
	}
	if out, _ := exec.Command(bin, "version").CombinedOutput(); !strings.Contains(string(out), "deploy-test") {
		t.Errorf("-X main.version does not reach `halt-envoy version`: %q", out)
	}
	if out, err := exec.Command(bin, "validate", "--config", repo("config")).CombinedOutput(); err != nil {
		t.Errorf("the config baked into the image does not validate: %v\n%s", err, out)
	}
}

// TestDockerignore checks the build context (an allowlist) holds every package the
// binary is built from: a new top-level directory must be added to .dockerignore.
func TestDockerignore(t *testing.T) {
	allowed := []string{}
	for _, line := range strings.Split(string(mustRead(t, repo(".dockerignore"))), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "!"); ok {
			allowed = append(allowed, strings.TrimSuffix(p, "/"))
		}
	}
	for _, need := range []string{"go.mod", "go.sum", "config"} {
		if !contains(allowed, need) {
			t.Errorf(".dockerignore excludes %s", need)
		}
	}
	cmd := exec.Command(testutil.GoTool(), "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/halt-envoy")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	abs, _ := filepath.Abs(root)
	for _, dir := range strings.Fields(string(out)) {
		rel, _ := filepath.Rel(abs, dir)
		top := strings.Split(filepath.ToSlash(rel), "/")[0]
		if !contains(allowed, top) {
			t.Errorf("cmd/halt-envoy builds from %s, which .dockerignore leaves out of the image's build context", rel)
		}
	}
}
