package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

var intOrStringType = reflect.TypeFor[IntOrString]()

// checkShape walks a document decoded generically (objects as
// map[string]any, numbers as json.Number) against the Go type it is about to
// be decoded into, and reports with its full path every field the type lacks
// (field names match exactly, unlike encoding/json) and every value of the
// wrong JSON type. It is what lets strict decoding errors name
// `spec.ingress[0].toPortz` rather than just `toPortz`.
func checkShape(v *validator, p fieldPath, val any, t reflect.Type) {
	if val == nil {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == intOrStringType {
		if s, ok := val.(json.Number); ok {
			if _, err := strconv.ParseInt(string(s), 10, 32); err == nil {
				return
			}
		}
		if _, ok := val.(string); !ok {
			v.addf(p, "want an integer or a string, got %s", describe(val))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := val.(map[string]any)
		if !ok {
			v.addf(p, "want an object, got %s", describe(val))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(obj) {
			f, ok := fields[k]
			if !ok {
				v.addf(p.child(k), "unknown field%s", suggest(k, fields))
				continue
			}
			checkShape(v, p.child(k), obj[k], f)
		}
	case reflect.Map:
		obj, ok := val.(map[string]any)
		if !ok {
			v.addf(p, "want an object, got %s", describe(val))
			return
		}
		for _, k := range sortedKeys(obj) {
			checkShape(v, p.key(k), obj[k], t.Elem())
		}
	case reflect.Slice:
		list, ok := val.([]any)
		if !ok {
			v.addf(p, "want a list, got %s", describe(val))
			return
		}
		for i, e := range list {
			checkShape(v, p.index(i), e, t.Elem())
		}
	case reflect.String:
		// sigs.k8s.io/yaml turns YAML numbers and booleans into strings
		// when a string is wanted (`port: 80`).
		switch val.(type) {
		case string, json.Number, bool:
		default:
			v.addf(p, "want a string, got %s", describe(val))
		}
	case reflect.Bool:
		if _, ok := val.(bool); !ok {
			v.addf(p, "want true or false, got %s", describe(val))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := val.(json.Number)
		if !ok {
			v.addf(p, "want an integer, got %s", describe(val))
		} else if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			v.addf(p, "%s is not a %d-bit integer", n, t.Bits())
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := val.(json.Number)
		if !ok {
			v.addf(p, "want an integer, got %s", describe(val))
		} else if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
			v.addf(p, "%s is not an unsigned %d-bit integer", n, t.Bits())
		}
	}
}

// fieldCache holds jsonFields' answers (reflect.Type → its map, which is
// never changed once stored).
var fieldCache sync.Map

// jsonFields maps the JSON names of t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	f := structFields(t)
	fieldCache.Store(t, f)
	return f
}

func structFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func describe(val any) string {
	switch x := val.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number:
		return "number " + string(x)
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", val)
}

// suggest names the known field closest to an unknown one, if any is close.
func suggest(name string, fields map[string]reflect.Type) string {
	best, bestDist := "", 3
	for _, f := range sortedKeys(fields) {
		d := editDistance(strings.ToLower(name), strings.ToLower(f))
		if d < bestDist {
			best, bestDist = f, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
