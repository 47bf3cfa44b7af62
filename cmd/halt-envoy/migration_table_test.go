package main

import (
	"os"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/refenv"
)

// TestMigrationTable keeps docs/migration.md's table true: one row for every variable of
// refenv.Vars() with its status, and each config key row's status matching what loading
// a file with the key does.
func TestMigrationTable(t *testing.T) {
	b, err := os.ReadFile("../../docs/migration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "| `") {
			continue
		}
		cells := strings.Split(l, " | ")
		rows[strings.Trim(strings.ReplaceAll(cells[0], "`", ""), "| ")] = cells
	}
	for _, v := range refenv.Vars() {
		r, ok := rows[v.Name]
		if !ok {
			t.Errorf("docs/migration.md has no row for %s", v.Name)
			continue
		}
		if len(r) < 3 || r[2] != v.Status.String() {
			t.Errorf("%s: the table says %q, refenv says %q", v.Name, r[2], v.Status)
		}
	}
	base := "domain: d\ndescriptors:\n  - key: k\n    value: \"v*\"\n"
	for key, doc := range map[string]string{
		"domain":                               base,
		"descriptors, key, value":              base,
		"rate_limit.unit":                      base + "    rate_limit: {unit: second, requests_per_unit: 1}\n",
		"rate_limit.requests_per_unit":         base + "    rate_limit: {unit: second, requests_per_unit: 1}\n",
		"rate_limit.unlimited":                 base + "    rate_limit: {unlimited: true}\n",
		"rate_limit.name, rate_limit.replaces": base + "    rate_limit: {unit: second, requests_per_unit: 1, name: a, replaces: [{name: b}]}\n",
		"shadow_mode":                          base + "    shadow_mode: true\n",
		"detailed_metric":                      base + "    detailed_metric: true\n",
		"value_to_metric":                      base + "    value_to_metric: true\n",
		"share_threshold":                      base + "    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
		"quota_mode":                           base + "    quota_mode: true\n",
		"metadata":                             base + "    metadata: {a: b}\n",
	} {
		r, ok := rows[key]
		if !ok {
			t.Errorf("docs/migration.md has no row for config key %s", key)
			continue
		}
		_, err := config.Parse(map[string][]byte{"f.yaml": []byte(doc)})
		refused := r[1] == refenv.NotYet.String()
		if refused != (err != nil) {
			t.Errorf("config key %s: the table says %q, loading it gives %v", key, r[1], err)
		}
		if err != nil && !strings.Contains(err.Error(), strings.Split(key, ",")[0]) {
			t.Errorf("config key %s: the error does not name it: %v", key, err)
		}
	}
}
