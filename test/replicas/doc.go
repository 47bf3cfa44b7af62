// Package replicas checks that several halt-envoy processes sharing one Redis Cluster
// admit, together, no more than one limit: the real binary, three copies, hammered on one
// key by concurrent gRPC clients, for every selectable algorithm. There is no non-test
// code here; docs/backends/redis.md ("Exactness across replicas") explains the checks.
package replicas
