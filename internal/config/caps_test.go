package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSizeCaps: a file above MaxFileBytes, a directory above MaxTotalBytes and pushed
// documents above either are refused before parsing, the problem naming the file (or
// directory) and the cap with the flag that raises it.
func TestSizeCaps(t *testing.T) {
	dir := t.TempDir()
	good := "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(good), 0o644)
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, []byte("domain: b\n# "+strings.Repeat("x", 2000)+"\n"), 0o644)
	o := Options{MaxFileBytes: 1024, MaxTotalBytes: 4096}

	for _, path := range []string{big, dir} {
		_, err := o.Load(path)
		if err == nil {
			t.Fatalf("%s: loaded", path)
		}
		want := big + ":1:1: 2 KiB, more than the cap of 1 KiB (raise it with --max-config-bytes)"
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v\nwant it to contain %q", path, err, want)
		}
	}

	// Total: five files of 900 bytes under a 4 KiB total; reading stops at the cap.
	total := t.TempDir()
	for _, n := range []string{"1", "2", "3", "4", "5"} {
		os.WriteFile(filepath.Join(total, n+".yaml"), []byte("domain: d"+n+"\n# "+strings.Repeat("x", 880)+"\n"), 0o644)
	}
	files, _, problems := o.readFiles(total)
	if len(files) != 4 || len(problems) != 1 || !strings.Contains(problems[0].Msg, "more than the cap of 4 KiB (raise it with --max-config-total-bytes)") ||
		problems[0].File != total {
		t.Fatalf("total: %d files read, problems %v", len(files), problems)
	}
	if _, err := o.Load(total); err == nil {
		t.Fatal("a directory above the total cap loaded")
	}

	// Parse (pushed documents) applies the same caps, and parses nothing past them.
	_, err := o.Parse(map[string][]byte{"xds:big": []byte(strings.Repeat("#", 1025)), "xds:a": []byte(good)})
	if err == nil || !strings.Contains(err.Error(), "xds:big:1:1: 1 KiB, more than the cap of 1 KiB") {
		t.Fatalf("pushed document: %v", err)
	}
	docs := map[string][]byte{}
	for _, n := range []string{"1", "2", "3", "4", "5"} {
		docs["xds:"+n] = []byte(strings.Repeat("#", 1000))
	}
	_, err = o.Parse(docs)
	if err == nil || !strings.Contains(err.Error(), "the 5 configuration documents together are 4.9 KiB, more than the cap of 4 KiB (raise it with --max-config-total-bytes)") {
		t.Fatalf("pushed documents together: %v", err)
	}

	// Defaults: 4 MiB a file, 16 MiB together.
	if (Options{}).maxFile() != 4<<20 || (Options{}).maxTotal() != 16<<20 {
		t.Fatal("default caps changed: update docs/config.md and docs/operations.md")
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("under the default caps: %v", err)
	}
}
