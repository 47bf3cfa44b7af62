// Package faults holds halt-envoy's fault-injection, overload and restart tests. The
// tests put a fault-injecting TCP proxy between halt and a real store (or kill private
// store servers they start themselves) and check that halt keeps answering per its
// failure_mode, within its store timeout, without leaking goroutines, and that counts
// are right again once the store is back. There is no non-test code here.
package faults
