//go:build unix

package memory

import (
	"fmt"
	"os"
	"syscall"
)

// checkOwner refuses a snapshot another user owns: whoever can write it decides what
// counts halt starts with (a planted file could hand out fresh quotas).
func checkOwner(fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("owned by uid %d, halt runs as uid %d", st.Uid, uid)
	}
	return nil
}
