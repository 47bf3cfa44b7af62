package deploy_test

import (
	"encoding/json"
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
	check("EXPOSE", "EXPOSE 8080 8081")
	check("ENTRYPOINT", `ENTRYPOINT ["/usr/local/bin/halt-envoy"]`)
	// The bundled config is on the default command line, not in ENV: a deployment that
	// sets its own command or arguments must not serve it next to its own configuration.
	check("CMD", `CMD ["serve", "--config", "/etc/halt-envoy/config"]`)
	for _, l := range final["ENV"] {
		if strings.Contains(l, "HALT_CONFIG") {
			t.Errorf("runtime stage sets %q: a pushed xDS config would be served next to the bundled one", l)
		}
	}
	// /bin/ratelimit, the reference image's command (Envoy Gateway starts it), is halt:
	// a symlink made in the build stage (distroless has no shell) and copied with its
	// directory (COPY keeps symlinks inside a copied directory).
	if !strings.Contains(joined, "ln -s /usr/local/bin/halt-envoy /out/bin/ratelimit") {
		t.Errorf("build stage does not link /out/bin/ratelimit to /usr/local/bin/halt-envoy")
	}
	check("COPY", "COPY --from=build /out/bin/ /bin/")
	check("COPY", "COPY --from=build /out/halt-envoy /usr/local/bin/halt-envoy")
	if got := imagePaths(t); !contains(got, "/bin/ratelimit") || !contains(got, "/usr/local/bin/halt-envoy") {
		t.Errorf("image executables %v: want /usr/local/bin/halt-envoy and /bin/ratelimit", got)
	}
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

// imagePaths are the executables the image holds: halt's binary and every symlink the
// build stage makes in /out/bin (copied to /bin).
func imagePaths(t *testing.T) []string {
	t.Helper()
	paths := []string{}
	for _, l := range dockerfile(t) {
		if strings.HasPrefix(l, "COPY --from=build /out/halt-envoy ") {
			paths = append(paths, strings.Fields(l)[3])
		}
		for _, m := range regexp.MustCompile(`ln -s /usr/local/bin/halt-envoy /out/bin/(\S+)`).FindAllStringSubmatch(l, -1) {
			paths = append(paths, "/bin/"+m[1])
		}
	}
	return paths
}

// imageArgv is what a container of the image runs, as Kubernetes decides it: a command
// replaces ENTRYPOINT and drops CMD; arguments alone replace CMD.
func imageArgv(t *testing.T, command, args []string) []string {
	t.Helper()
	var entrypoint, cmd []string
	for _, l := range dockerfile(t) {
		inst, rest, _ := strings.Cut(l, " ")
		var v []string
		switch inst {
		case "ENTRYPOINT":
			entrypoint = mustJSON(t, rest, v)
		case "CMD":
			cmd = mustJSON(t, rest, v)
		}
	}
	switch {
	case len(command) > 0:
		return append(append([]string{}, command...), args...)
	case len(args) > 0:
		return append(append([]string{}, entrypoint...), args...)
	}
	return append(append([]string{}, entrypoint...), cmd...)
}

func mustJSON(t *testing.T, s string, v []string) []string {
	t.Helper()
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("Dockerfile %s: want the exec (JSON) form: %v", s, err)
	}
	return v
}

// TestImageArgv: the image's default command serves the bundled configuration; Envoy
// Gateway's command (/bin/ratelimit, no arguments) and the Helm chart's arguments (serve)
// do not.
func TestImageArgv(t *testing.T) {
	if got := imageArgv(t, nil, nil); strings.Join(got, " ") != "/usr/local/bin/halt-envoy serve --config /etc/halt-envoy/config" {
		t.Errorf("default argv %q", got)
	}
	if got := imageArgv(t, []string{"/bin/ratelimit"}, nil); strings.Join(got, " ") != "/bin/ratelimit" {
		t.Errorf("Envoy Gateway's argv %q", got)
	}
	if got := imageArgv(t, nil, []string{"serve"}); strings.Join(got, " ") != "/usr/local/bin/halt-envoy serve" {
		t.Errorf("the chart's argv %q", got)
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
