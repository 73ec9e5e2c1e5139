package main

import (
	"fmt"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonSafe rewrites, in JSON text b, the characters a terminal acts on that
// JSON encoders leave raw (DEL, C1 controls, bidi overrides and other
// non-graphic characters) as \uXXXX escapes: the same JSON, safe to print.
// Outside strings JSON is ASCII, so every such character is in a string.
func jsonSafe(b []byte) []byte { return escapeUnsafe(b, false) }

// termUnsafe reports whether r is a character a terminal acts on that
// encoders leave raw: DEL, C1 controls, bidi overrides and other
// non-graphic characters (C0 controls are escaped by every encoder here).
func termUnsafe(r rune) bool {
	return r == 0x7f || r >= 0x80 && !unicode.IsGraphic(r)
}

// escapeUnsafe writes every character of b that termUnsafe reports as a
// \uXXXX escape, the form JSON strings and YAML double-quoted strings both
// read back; past U+FFFF a UTF-16 pair for JSON, \UXXXXXXXX for YAML (which
// has no surrogates). Callers make sure every such character is inside such
// a string. Invalid UTF-8 is left as it is.
func escapeUnsafe(b []byte, yaml bool) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n <= 1, !termUnsafe(r):
			out = append(out, b[i:i+n]...)
		case r > 0xffff && yaml:
			out = fmt.Appendf(out, `\U%08x`, r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += n
	}
	return out
}
