package authz_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/authz"
)

// TestSizeCaps: an authz file above its cap and an API key file above its own are
// refused before parsing, naming the file, the cap and the flag that raises it.
func TestSizeCaps(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "authz.yaml")
	os.WriteFile(cfg, []byte("domain: d\nidentity: [{api_key: {header: x-api-key}}]\napi_keys_file: keys.yaml\n"), 0o644)
	keys := filepath.Join(dir, "keys.yaml")
	os.WriteFile(keys, []byte("api_keys: []\n# "+strings.Repeat("x", 3000)+"\n"), 0o644)

	_, err := authz.Caps{KeysBytes: 2048}.LoadConfig(cfg)
	if err == nil || !strings.Contains(err.Error(), keys+": 2.9 KiB, more than the cap of 2 KiB (raise it with --max-authz-keys-bytes)") {
		t.Fatalf("key file: %v", err)
	}
	_, err = authz.Caps{ConfigBytes: 64}.LoadConfig(cfg)
	if err == nil || !strings.Contains(err.Error(), cfg+": 78 B, more than the cap of 64 B (raise it with --max-config-bytes)") {
		t.Fatalf("authz file: %v", err)
	}
	if _, err := authz.LoadConfig(cfg); err != nil {
		t.Fatalf("under the default caps: %v", err)
	}
}
