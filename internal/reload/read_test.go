package reload

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFileCap(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.yaml")
	os.WriteFile(small, []byte("domain: x\n"), 0o644)
	if b, err := ReadFile(small, 10, "--cap"); err != nil || string(b) != "domain: x\n" {
		t.Fatalf("a file at the cap: %q %v", b, err)
	}
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, make([]byte, 5<<20), 0o644)
	_, err := ReadFile(big, 4<<20, "--max-config-bytes")
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != 5<<20 {
		t.Fatalf("big file: %v", err)
	}
	if want := big + ": 5 MiB, more than the cap of 4 MiB (raise it with --max-config-bytes)"; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	// Not a regular file: read up to the cap and one byte, then refused.
	_, err = ReadFile("/dev/zero", 1<<20, "--cap")
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "larger, more than the cap of 1 MiB") {
		t.Fatalf("/dev/zero: %v", err)
	}
	if b, err := ReadFile(big, 0, ""); err != nil || len(b) != 5<<20 {
		t.Fatalf("no cap: %d %v", len(b), err)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{17: "17 B", 1536: "1.5 KiB", 4 << 20: "4 MiB", 100_000_000: "95.4 MiB", 3 << 30: "3 GiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}
