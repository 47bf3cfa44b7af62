// Command gen-dashboard writes deploy/grafana/dashboards/halt.json, the halt-envoy Grafana
// dashboard, from its definition in Go (dashboard.go) built with the Grafana Foundation
// SDK. The JSON is the artifact Grafana imports and docker-compose provisions; it stays
// committed, and this package's test fails when it differs from what the code builds.
//
//	go generate ./deploy/grafana/...
package main

//go:generate go run . -out ../dashboards/halt.json

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	out := flag.String("out", "", "write the dashboard JSON to this file (default: standard output)")
	flag.Parse()
	b, err := dashboardJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen-dashboard:", err)
		os.Exit(1)
	}
	if *out == "" {
		os.Stdout.Write(b)
		return
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen-dashboard:", err)
		os.Exit(1)
	}
}
