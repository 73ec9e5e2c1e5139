package api

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"sigs.k8s.io/yaml"
)

// API versions of the documents Parse reads.
const (
	ciliumAPIVersion     = "cilium.io/v2"
	networkingAPIVersion = "networking.k8s.io/v1"
	coreAPIVersion       = "v1"
)

type typeMeta struct{ apiVersion, kind string }

// listKinds maps the list kinds Parse accepts to the kind of their items
// (zero for a generic List, whose items name their own kind).
var listKinds = map[typeMeta]typeMeta{
	{coreAPIVersion, "List"}:                                 {},
	{ciliumAPIVersion, "CiliumNetworkPolicyList"}:            {ciliumAPIVersion, KindCiliumNetworkPolicy},
	{ciliumAPIVersion, "CiliumClusterwideNetworkPolicyList"}: {ciliumAPIVersion, KindCiliumClusterwideNetworkPolicy},
	{networkingAPIVersion, "NetworkPolicyList"}:              {networkingAPIVersion, KindNetworkPolicy},
}

// objectMeta is the metadata of a policy document.
type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ciliumDocument is a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
type ciliumDocument struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       *Rule      `json:"spec,omitempty"`
	Specs      []Rule     `json:"specs,omitempty"`
}

// listDocument is a List of policy documents; its metadata is ignored.
type listDocument struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata,omitempty"`
	Items      []any          `json:"items"`
}

// Parse reads policy documents: YAML or JSON, one or many separated by
// `---` lines (empty documents are skipped), each a CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy, NetworkPolicy or a list of them (a List,
// a typed list like CiliumNetworkPolicyList, or a JSON array). Decoding is
// strict: an unknown field is an error. It returns every policy, normalised
// (see the package comment), or every problem found, each a
// *ValidationError wrapping ErrInvalidPolicy, and no policy.
func Parse(data []byte) ([]Policy, error) {
	var (
		out  []Policy
		errs []error
		seen = map[string]bool{}
	)
	for _, r := range parseAll(splitDocuments(data)) {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		for _, p := range r.policies {
			if seen[p.Key()] {
				errs = append(errs, &ValidationError{Document: fmt.Sprintf("policy %q", p.Key()),
					Field: "metadata.name", Reason: "defined more than once in the input"})
				continue
			}
			seen[p.Key()] = true
			out = append(out, p)
		}
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return out, nil
}

// parsed is the outcome of parsing one document.
type parsed struct {
	policies []Policy
	err      error
}

// parseAll parses the documents on every CPU (they are independent) and
// returns their outcomes in input order.
func parseAll(docs []document) []parsed {
	out := make([]parsed, len(docs))
	workers := min(runtime.GOMAXPROCS(0), len(docs))
	if workers <= 1 {
		for i, d := range docs {
			out[i].policies, out[i].err = d.parse()
		}
		return out
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(docs); i = int(next.Add(1) - 1) {
				out[i].policies, out[i].err = docs[i].parse()
			}
		})
	}
	wg.Wait()
	return out
}

func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// document is one `---`-separated part of the input.
type document struct {
	text  []byte
	start int // line number of text's first line in the input
	line  int // of its first line that is neither blank nor a comment
}

func (d document) label() string { return fmt.Sprintf("document at line %d", d.line) }

// splitDocuments cuts data at lines that start with `---`. Text after `---`
// other than a comment starts the next document.
func splitDocuments(data []byte) []document {
	var docs []document
	start, startLine := 0, 1
	cut := func(end int) {
		docs = append(docs, document{text: data[start:end], start: startLine, line: contentLine(data[start:end], startLine)})
	}
	for off, line := 0, 1; off < len(data); line++ {
		next := len(data)
		if i := bytes.IndexByte(data[off:], '\n'); i >= 0 {
			next = off + i + 1
		}
		l := bytes.TrimRight(data[off:next], "\r\n")
		if bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t') {
			cut(off)
			if rest := bytes.TrimSpace(l[3:]); len(rest) == 0 || rest[0] == '#' {
				start, startLine = next, line+1
			} else {
				start, startLine = off+3, line
			}
		}
		off = next
	}
	cut(len(data))
	return docs
}

// contentLine returns the number of text's first line that is neither blank
// nor a comment, counting from first.
func contentLine(text []byte, first int) int {
	for i, l := range bytes.Split(text, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			return first + i
		}
	}
	return first
}

func (d document) parse() ([]Policy, error) {
	j, err := yamlToJSON(d.text, d.start)
	if err != nil {
		return nil, &ValidationError{Document: d.label(), Reason: err.Error(), Err: err}
	}
	var val any
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&val); err != nil {
		return nil, &ValidationError{Document: d.label(), Reason: err.Error(), Err: err}
	}
	switch x := val.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		return parseObject(d.label(), x, d.text, true)
	case []any:
		return parseItems(d.label(), "", typeMeta{}, x)
	}
	return nil, &ValidationError{Document: d.label(), Reason: "want a policy document (an object), got " + describe(val)}
}

// yamlToJSON converts one document whose first line is line start of the
// input; line numbers in its errors count from the input's start. Each
// document is converted alone, so parsing stays linear in the input (the
// document is not padded with the lines before it).
func yamlToJSON(text []byte, start int) ([]byte, error) {
	if start <= 1 {
		return yaml.YAMLToJSONStrict(text)
	}
	// One leading newline keeps the YAML library's quirks of the first
	// line (it names no line for a problem on line 0): the numbers it
	// reports are then the input's, less start-2.
	j, err := yaml.YAMLToJSONStrict(append([]byte("\n"), text...))
	if err != nil {
		return nil, shiftLines(err, start-2)
	}
	return j, nil
}

// yamlLineRe matches the line numbers the YAML library puts at the start of
// an error ("yaml: line 7: …") or of each of its unmarshal errors.
var yamlLineRe = regexp.MustCompile(`(?m)^(yaml: |  )line (\d+)`)

// shiftLines adds offset to the line numbers a YAML error reports.
func shiftLines(err error, offset int) error {
	msg := yamlLineRe.ReplaceAllStringFunc(err.Error(), func(m string) string {
		sub := yamlLineRe.FindStringSubmatch(m)
		n, _ := strconv.Atoi(sub[2])
		return fmt.Sprintf("%sline %d", sub[1], n+offset)
	})
	return &yamlError{msg: msg, err: err}
}

// yamlError is a YAML error with its line numbers counted from the input's
// start; it unwraps to the library's error.
type yamlError struct {
	msg string
	err error
}

func (e *yamlError) Error() string { return e.msg }
func (e *yamlError) Unwrap() error { return e.err }

// parseObject parses one decoded document whose text is src.
func parseObject(label string, obj map[string]any, src []byte, allowList bool) ([]Policy, error) {
	tm := typeMeta{}
	tm.apiVersion, _ = obj["apiVersion"].(string)
	tm.kind, _ = obj["kind"].(string)
	switch tm {
	case typeMeta{ciliumAPIVersion, KindCiliumNetworkPolicy}, typeMeta{ciliumAPIVersion, KindCiliumClusterwideNetworkPolicy}:
		return parseCilium(label, tm.kind, obj, src)
	case typeMeta{networkingAPIVersion, KindNetworkPolicy}:
		return parseNetworkPolicy(label, obj, src)
	}
	v := &validator{doc: label}
	if elem, ok := listKinds[tm]; ok {
		if !allowList {
			v.addf("kind", "%q cannot be nested in a list", tm.kind)
			return nil, v.err()
		}
		var doc listDocument
		if !v.decode(obj, src, &doc) {
			return nil, v.err()
		}
		// The items as decoded generically: numbers still json.Number.
		items, _ := obj["items"].([]any)
		return parseItems(label, "items", elem, items)
	}
	switch {
	case tm.apiVersion == "":
		v.addf("apiVersion", "required")
	case tm.kind == "":
		v.addf("kind", "required")
	case tm.apiVersion == ciliumAPIVersion:
		v.addf("kind", "%q is not one of %s, %s", tm.kind, KindCiliumNetworkPolicy, KindCiliumClusterwideNetworkPolicy)
	case tm.apiVersion == networkingAPIVersion:
		v.addf("kind", "%q is not %s", tm.kind, KindNetworkPolicy)
	case tm.apiVersion == coreAPIVersion:
		v.addf("kind", "%q is not List", tm.kind)
	default:
		v.addf("apiVersion", "%q is not one of %s, %s", tm.apiVersion, ciliumAPIVersion, networkingAPIVersion)
	}
	return nil, v.err()
}

// parseItems parses the items of a list; a typed list (elem set) lets
// items omit apiVersion and kind.
func parseItems(label, field string, elem typeMeta, items []any) ([]Policy, error) {
	var (
		out  []Policy
		errs []error
	)
	for i, item := range items {
		il := fmt.Sprintf("%s, %s[%d]", label, field, i)
		obj, ok := item.(map[string]any)
		if !ok {
			errs = append(errs, &ValidationError{Document: il, Reason: "want a policy document (an object), got " + describe(item)})
			continue
		}
		if elem.kind != "" {
			if _, ok := obj["apiVersion"]; !ok {
				obj["apiVersion"] = elem.apiVersion
			}
			if _, ok := obj["kind"]; !ok {
				obj["kind"] = elem.kind
			}
			if obj["apiVersion"] != elem.apiVersion || obj["kind"] != elem.kind {
				errs = append(errs, &ValidationError{Document: il, Field: "kind",
					Reason: fmt.Sprintf("%v %v does not belong in a list of %s %s", obj["apiVersion"], obj["kind"], elem.apiVersion, elem.kind)})
				continue
			}
		}
		src, err := itemSource(obj)
		if err != nil {
			errs = append(errs, &ValidationError{Document: il, Reason: err.Error(), Err: err})
			continue
		}
		ps, err := parseObject(il, obj, src, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ps...)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return out, nil
}

// itemSource re-marshals a list item as YAML.
func itemSource(obj map[string]any) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// docLabel names a document by its key once its name is known.
func docLabel(label, kind string, obj map[string]any, namespace string) string {
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if name == "" {
		return label
	}
	return fmt.Sprintf("policy %q", KeyOf(kind, namespace, name))
}

// namespaceOf returns the namespace a namespaced document names, or the
// default.
func namespaceOf(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	if ns, _ := meta["namespace"].(string); ns != "" {
		return ns
	}
	return DefaultNamespace
}

// decode checks obj's shape against out's type and then decodes obj into
// out (src, the text obj was read from, is not read again).
func (v *validator) decode(obj map[string]any, src []byte, out any) bool {
	checkShape(v, "", obj, reflect.TypeOf(out))
	if !v.ok() {
		return false
	}
	if err := decodeTyped(obj, out); err != nil {
		v.wrap("", err)
		return false
	}
	return true
}

// decodeTyped decodes obj, which checkShape accepted for out's type, into
// out as yaml.UnmarshalStrict decodes the YAML obj was read from, without
// parsing the YAML a second time (half the cost of parsing): a number or a
// boolean where out wants a string becomes that string, as sigs.k8s.io/yaml
// makes it (`port: 80`, integers in decimal, other numbers as 32-bit %g).
// One difference: a YAML float with an integer value, such as 1e7, where a
// string is wanted is written in decimal ("10000000", not "1e+07").
func decodeTyped(obj map[string]any, out any) error {
	b, err := json.Marshal(stringsWhereWanted(obj, reflect.TypeOf(out)))
	if err != nil {
		return fmt.Errorf("error converting YAML to JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("error unmarshaling JSON: while decoding JSON: %w", err)
	}
	return nil
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// stringsWhereWanted returns val (decoded generically, numbers as
// json.Number) with the numbers and booleans at the places where t holds a
// string turned into strings. It builds new maps and lists; val is not
// changed.
func stringsWhereWanted(val any, t reflect.Type) any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if pt := reflect.PointerTo(t); pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) {
		return val
	}
	switch x := val.(type) {
	case map[string]any:
		var fields map[string]reflect.Type
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
		default:
			return val
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			switch ft, ok := fields[k]; {
			case t.Kind() == reflect.Map:
				out[k] = stringsWhereWanted(e, t.Elem())
			case ok:
				out[k] = stringsWhereWanted(e, ft)
			default:
				out[k] = e
			}
		}
		return out
	case []any:
		if t.Kind() != reflect.Slice {
			return val
		}
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = stringsWhereWanted(e, t.Elem())
		}
		return out
	case bool:
		if t.Kind() == reflect.String {
			return strconv.FormatBool(x)
		}
	case json.Number:
		if t.Kind() == reflect.String {
			return yamlNumberString(x)
		}
	}
	return val
}

// yamlNumberString writes a number as sigs.k8s.io/yaml does where a string
// is wanted: an integer as it is, a float as a 32-bit %g.
func yamlNumberString(n json.Number) string {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		return s
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return s
	}
	return strconv.FormatFloat(f, 'g', -1, 32)
}

func parseCilium(label, kind string, obj map[string]any, src []byte) ([]Policy, error) {
	sc := scope{kind: kind}
	if kind != KindCiliumClusterwideNetworkPolicy {
		sc.namespace = namespaceOf(obj)
	}
	v := &validator{doc: docLabel(label, kind, obj, sc.namespace), strict: true}
	var doc ciliumDocument
	if !v.decode(obj, src, &doc) {
		return nil, v.err()
	}
	m := doc.Metadata
	if kind != KindCiliumClusterwideNetworkPolicy && m.Namespace == "" {
		m.Namespace = DefaultNamespace
	}
	v.meta("metadata", kind, m)
	var rules []Rule
	switch {
	case doc.Spec != nil && doc.Specs != nil:
		v.addf("specs", "cannot be combined with spec")
	case doc.Spec != nil:
		rules = []Rule{*doc.Spec}
		v.rule("spec", doc.Spec, sc)
	case len(doc.Specs) > 0:
		rules = doc.Specs
		for i := range rules {
			v.rule(fieldPath("specs").index(i), &rules[i], sc)
		}
	default:
		v.addf("spec", "required: give one rule as spec or a list of rules as specs")
	}
	if !v.ok() {
		return nil, v.err()
	}
	return finish(Policy{Kind: kind, Namespace: m.Namespace, Name: m.Name, Labels: m.Labels,
		Annotations: m.Annotations, Rules: rules, Source: string(src)})
}

// finish normalises a parsed policy and checks its internal form.
func finish(p Policy) ([]Policy, error) {
	p.normalize()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return []Policy{p}, nil
}
