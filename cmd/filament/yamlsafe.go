package main

import (
	"bytes"
	"encoding/json"

	yaml3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// yamlSafe is v as YAML (sigs.k8s.io/yaml's form: keys sorted, two-space
// indents), with what a terminal acts on escaped. YAML encoders leave bidi
// overrides and other format characters raw even in quoted strings, as
// YAML counts them printable; when one is there, every string is written
// double-quoted and the character as an escape, which reads back the same.
func yamlSafe(v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonToYAMLSafe(j)
}

// jsonToYAMLSafe is yaml.JSONToYAML with yamlSafe's escaping.
func jsonToYAMLSafe(j []byte) ([]byte, error) {
	// The YAML parsers refuse raw C1 controls in their input (JSON
	// encoders leave them raw; until 2026-12-06 a pod's C1 control in a
	// name or a topic made -o yaml fail): give them the escaped JSON.
	j = escapeUnsafe(j, true)
	y, err := yaml.JSONToYAML(j)
	if err != nil || bytes.IndexFunc(y, termUnsafe) < 0 {
		return y, err
	}
	// Rare: re-encode with every string double-quoted, then escape the
	// characters, all inside those strings.
	var doc yaml3.Node
	if err := yaml3.Unmarshal(j, &doc); err != nil {
		return nil, err
	}
	restyle(&doc)
	var buf bytes.Buffer
	enc := yaml3.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return escapeUnsafe(buf.Bytes(), true), nil
}

// restyle gives the nodes parsed from JSON block style, and double quotes
// to every string: unambiguous to YAML 1.1 readers too (plain y, on or 0x1f
// would read back as a bool or a number there).
func restyle(n *yaml3.Node) {
	n.Style = 0
	if n.Kind == yaml3.ScalarNode && n.Tag == "!!str" {
		n.Style = yaml3.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		restyle(c)
	}
}
