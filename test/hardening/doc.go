// Package hardening holds the attacks on halt-envoy's listeners and inputs that once got
// through (issue 15), each run against the real binary or the real gRPC/HTTP servers:
// HTTP/2 rapid reset on the gRPC port, slow and idle HTTP connections, POST /json under
// overload, oversized config and key files, crash loss of the memory store, secrets in
// store URLs, and admin-token guessing. There is no non-test code here.
package hardening
