// Package strictyaml is the test plumbing for deployment manifests: split a YAML stream
// into documents, decode a document into a Go type refusing unknown and duplicate fields
// (sigs.k8s.io/json's strict mode, whose errors name the field's path), and prove a
// decoder refuses every misspelt field of a document by its name.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	yamlv3 "gopkg.in/yaml.v3"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Split returns the non-empty documents of a multi-document YAML stream.
func Split(b []byte) ([][]byte, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(b))
	var out [][]byte
	for {
		var n yamlv3.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(n.Content) == 0 || (n.Content[0].Kind == yamlv3.ScalarNode && n.Content[0].Tag == "!!null") {
			continue
		}
		doc, err := yamlv3.Marshal(&n)
		if err != nil {
			return nil, err
		}
		out = append(out, doc)
	}
}

// ToJSON converts a YAML document to JSON, refusing duplicate keys.
func ToJSON(doc []byte) ([]byte, error) { return yaml.YAMLToJSONStrict(doc) }

// DecodeJSON decodes JSON into obj (a pointer to a Go type), refusing unknown and
// duplicate fields; the error names each field by its path
// (unknown field "spec.template.spec.containers[0].imagePullPolizy").
func DecodeJSON(j []byte, obj any) error {
	strict, err := sigsjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// Decode is ToJSON then DecodeJSON.
func Decode(doc []byte, obj any) error {
	j, err := ToJSON(doc)
	if err != nil {
		return err
	}
	return DecodeJSON(j, obj)
}

// FreeForm are the fields whose keys are data, not schema (labels, ConfigMap keys, ...):
// a renamed key there is a different datum that no decoder can call misspelt.
var FreeForm = []string{
	"metadata.labels", "metadata.annotations", "matchLabels", "data", "stringData",
	"spec.selector", "workloadSelector.labels", "nodeSelector",
}

// isFreeForm reports whether the keys of the map at parent are data.
func isFreeForm(parent string, extra []string) bool {
	for _, f := range append(append([]string(nil), FreeForm...), extra...) {
		if parent == f || strings.HasSuffix(parent, "."+f) {
			return true
		}
	}
	return false
}

// Misspell renames the mapping keys of a YAML document one at a time (key -> keyTypo) and
// wants decode to refuse each result with an error naming the renamed key. A key of a
// free-form map (FreeForm, or one of freeForm's paths) may decode: it is data. It is how
// the tests prove that a misspelt field in a manifest fails with its name.
func Misspell(t testing.TB, file string, doc []byte, decode func([]byte) error, freeForm ...string) {
	t.Helper()
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(doc, &root); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	type key struct {
		node         *yamlv3.Node
		parent, path string
	}
	var keys []key
	var walk func(n *yamlv3.Node, path string)
	walk = func(n *yamlv3.Node, path string) {
		switch n.Kind {
		case yamlv3.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := strings.TrimPrefix(path+"."+n.Content[i].Value, ".")
				keys = append(keys, key{n.Content[i], path, p})
				walk(n.Content[i+1], p)
			}
		case yamlv3.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(&root, "")
	for _, k := range keys {
		if k.node.Value == "@type" {
			continue // an Any's type URL: protojson reports a missing @type, not its name
		}
		orig := k.node.Value
		k.node.Value = orig + "Typo"
		b, err := yamlv3.Marshal(&root)
		k.node.Value = orig
		if err != nil {
			t.Fatal(err)
		}
		err = decode(b)
		switch {
		case err == nil && !isFreeForm(k.parent, freeForm):
			t.Errorf("%s: a misspelt %s (%sTypo) decodes without an error", file, k.path, orig)
		case err != nil && !strings.Contains(err.Error(), orig+"Typo"):
			t.Errorf("%s: a misspelt %s fails without naming it: %v", file, k.path, err)
		}
	}
}
