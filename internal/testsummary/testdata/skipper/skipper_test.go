// Package skipper is a sample for internal/testsummary's tests: its test skips the way
// HALT_SKIPPER says, so that a real go test -json run can be fed to the summary.
package skipper

import (
	"os"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

func TestPasses(t *testing.T) {}

func TestSkips(t *testing.T) {
	switch os.Getenv("HALT_SKIPPER") {
	case "plain":
		t.Skip("something is missing on this machine")
	case "peer":
		testutil.Peer(t, "HALT_SKIPPER_PEER_THAT_IS_NEVER_SET")
	case "short":
		testutil.SkipIfShort(t, "takes long")
	case "allowed":
		t.Skip("allowed by testdata/allowed-skips.txt")
	case "fail":
		t.Fatal("fails on purpose")
	}
}
