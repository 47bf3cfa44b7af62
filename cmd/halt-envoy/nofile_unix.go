//go:build unix

package main

import "syscall"

// raiseNoFile sets RLIMIT_NOFILE's soft limit to its hard limit. Go's runtime does so at
// start on Linux and macOS (and restores the old one for child processes); this makes
// it true wherever the runtime did not.
func raiseNoFile() (before, after uint64, err error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, 0, err
	}
	before = uint64(l.Cur)
	if l.Cur >= l.Max {
		return before, before, nil
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return before, before, err
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return before, before, err
	}
	return before, uint64(l.Cur), nil
}
