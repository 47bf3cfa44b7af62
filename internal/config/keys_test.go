package config

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// keyTable is what the tests need of one mapping's table.
type keyTable struct {
	doc   string
	names []string
}

func allTables() map[string]keyTable {
	t := newTables()
	tab := func(doc string, names []string) keyTable { return keyTable{doc, names} }
	return map[string]keyTable{
		"file":         tab(t.file.doc, t.file.names()),
		"descriptor":   tab(t.descriptor.doc, t.descriptor.names()),
		"rate_limit":   tab(t.rateLimit.doc, t.rateLimit.names()),
		"replaces":     tab(t.replace.doc, t.replace.names()),
		"policy":       tab(t.policy.doc, t.policy.names()),
		"plan":         tab(t.plan.doc, t.plan.names()),
		"quota":        tab(t.quota.doc, t.quota.names()),
		"penalty":      tab(t.penalty.doc, t.penalty.names()),
		"exemptions":   tab(t.exemptions.doc, t.exemptions.names()),
		"exempt value": tab(t.exemptValue.doc, t.exemptValue.names()),
	}
}

// Every table is well formed (no key twice), and an unknown key in each mapping lists
// exactly that table's keys, at the unknown key.
func TestKeyTables(t *testing.T) {
	unknownIn := map[string]string{
		"file":         "domain: d\nzz_unknown: 1\n",
		"descriptor":   "domain: d\ndescriptors:\n  - {key: k, zz_unknown: 1}\n",
		"rate_limit":   "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, zz_unknown: 1}}\n",
		"replaces":     "domain: d\ndescriptors:\n  - {key: k, replaces: [{name: x, zz_unknown: 1}]}\n",
		"policy":       "domain: d\npolicies:\n  P: {zz_unknown: 1}\n",
		"plan":         "domain: d\nplans:\n  P: {zz_unknown: 1}\n",
		"quota":        "domain: d\ndescriptors:\n  - {key: k, quota: {zz_unknown: 1}}\n",
		"penalty":      "domain: d\npenalties:\n  P: {zz_unknown: 1}\n",
		"exemptions":   "domain: d\nexemptions: {zz_unknown: 1}\n",
		"exempt value": "domain: d\nexemptions: {values: [{key: k, zz_unknown: 1}]}\n",
	}
	tables := allTables()
	if len(tables) != len(unknownIn) {
		t.Fatalf("%d tables, %d of them tested", len(tables), len(unknownIn))
	}
	for name, tab := range tables {
		seen := map[string]bool{}
		for _, k := range tab.names {
			if k == "" || seen[k] {
				t.Errorf("%s: key %q is empty or twice in the table", name, k)
			}
			seen[k] = true
		}
		le := parseErr(t, map[string]string{"f.yaml": unknownIn[name]})
		want := "unknown key (valid here: " + strings.Join(tab.names, ", ") + ")"
		if !slices.ContainsFunc(le.Problems, func(p Problem) bool {
			return p.Msg == want && strings.HasSuffix(p.Field, "zz_unknown") && p.Line == strings.Count(unknownIn[name], "\n")
		}) {
			t.Errorf("%s: problems %v do not include %q", name, le, want)
		}
	}
}

// docTable returns the lines of docs/config.md's table that doc names: the table under
// the heading doc, or the table whose header row starts with doc.
func docTable(t *testing.T, lines []string, doc string) []string {
	t.Helper()
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, doc) })
	if start < 0 {
		t.Fatalf("docs/config.md has no %q", doc)
	}
	if strings.HasPrefix(doc, "#") {
		for start < len(lines) && !strings.HasPrefix(lines[start], "|") {
			start++
		}
	}
	end := start
	for end < len(lines) && strings.HasPrefix(lines[end], "|") {
		end++
	}
	return lines[start+2 : end] // past the header and the |---| row
}

var backticked = regexp.MustCompile("`([^`]+)`")

// docs/config.md documents every key of every table, and no key that a table lacks: a
// new key is a row in its table and a row in the docs, and this test keeps them in step.
func TestKeysDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for name, tab := range allTables() {
		if tab.doc == "" {
			continue // documented in its parent's row
		}
		documented := map[string]bool{}
		for _, row := range docTable(t, lines, tab.doc) {
			cells := strings.Split(row, "|")
			if len(cells) < 2 {
				continue
			}
			for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
				documented[m[1]] = true
			}
		}
		for _, k := range tab.names {
			if !documented[k] {
				t.Errorf("%s key %q is not in docs/config.md's table %q", name, k, tab.doc)
			}
		}
		for k := range documented {
			if !slices.Contains(tab.names, k) {
				t.Errorf("docs/config.md's table %q documents %q, which is not a %s key", tab.doc, k, name)
			}
		}
	}
}
