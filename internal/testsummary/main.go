// Command testsummary reads go test -json on its standard input, echoes what a person
// needs (build errors, the output of failed tests, one line per package), and closes
// with the counts, every skipped test by name and a verdict: OK, PARTIAL or FAIL.
//
// scripts/test.sh pipes its go test stage through it:
//
//	go test -json -race ./... | go run ./internal/testsummary -module "$(go list -m)" \
//	    -allow scripts/allowed-skips.txt -peers -verdict FILE
//
// A skip is allowed when the allowed-skips file names the test with a reason; a skip for
// a missing peer (internal/testutil's SkipNoPeer) only without -peers, and a skip of a
// long test (SkipShort) only with -short: either makes the verdict PARTIAL. Any other
// skip fails the run, as does a failed test or package, or a run in which no test passed.
// The exit status is 1 for FAIL, 0 otherwise; -verdict writes the verdict to a file.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("testsummary", flag.ContinueOnError)
	module := fs.String("module", "", "the module path (go list -m); the allowed-skips file names packages relative to it")
	allow := fs.String("allow", "", "the allowed-skips file: PACKAGE TEST REASON a line")
	peers := fs.Bool("peers", false, "the run promised every peer (HALT_TEST_PEERS=1): a skip for a missing one is unexpected")
	short := fs.Bool("short", false, "go test ran with -short: skips of long tests are expected")
	verdict := fs.String("verdict", "", "write the verdict (OK, PARTIAL or FAIL) to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *module == "" {
		fmt.Fprintln(os.Stderr, "testsummary: -module is required")
		return 2
	}
	rules := Rules{Module: *module, PeersUp: *peers, Short: *short, Allowed: map[string]string{}}
	if *allow != "" {
		f, err := os.Open(*allow)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			return 2
		}
		rules.Allowed, err = ParseAllowed(f, *allow)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			return 2
		}
	}
	s := New(rules, os.Stdout)
	if err := s.Read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary: reading go test -json:", err)
		return 2
	}
	s.Report(os.Stdout)
	v := s.Verdict()
	if *verdict != "" {
		if err := os.WriteFile(*verdict, []byte(v+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			return 2
		}
	}
	if v == "FAIL" {
		return 1
	}
	return 0
}
