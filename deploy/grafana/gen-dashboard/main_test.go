package main

//lint:file-ignore SA1019 the SDK marks its v1 dashboard deprecated in favour of dashboardv2; v1 is the JSON model Grafana's import and file provisioning take (v2 needs Grafana 12's dashboardNewLayouts feature flag), so the committed dashboard stays v1

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// TestCommittedJSON wants the committed dashboard to be exactly what the code builds:
// edit dashboard.go and run go generate ./deploy/grafana/..., never the JSON by hand.
func TestCommittedJSON(t *testing.T) {
	want, err := dashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../dashboards/halt.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("deploy/grafana/dashboards/halt.json differs from what dashboard.go builds: run go generate ./deploy/grafana/...")
	}
}

// TestJSONIsAGrafanaDashboard reads the JSON back with the SDK's strict decoder: no
// field Grafana's dashboard schema lacks, every panel and query of a known type.
func TestJSONIsAGrafanaDashboard(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	b, err := os.ReadFile("../dashboards/halt.json")
	if err != nil {
		t.Fatal(err)
	}
	d, err := strictDashboard(b)
	if err != nil {
		t.Fatalf("halt.json: %v", err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("halt.json: no panels")
	}
	// The decoder bites: a misspelt field of a panel is refused by name.
	bad := bytes.Replace(b, []byte(`"gridPos"`), []byte(`"gridPoz"`), 1)
	if _, err := strictDashboard(bad); err == nil || !strings.Contains(err.Error(), "gridPoz") {
		t.Errorf("a misspelt gridPos: %v, want an error naming it", err)
	}
}

// strictDashboard decodes with the SDK's strict decoder. (It can return an empty
// cog.BuildErrors as a non-nil error: that is success.)
func strictDashboard(b []byte) (*dashboard.Dashboard, error) {
	d := &dashboard.Dashboard{}
	err := d.UnmarshalJSONStrict(b)
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		err = nil
	}
	return d, err
}
