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
func jsonSafe(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n <= 1, r < 0x7f, r == ' ' || r >= 0x80 && unicode.IsGraphic(r):
			out = append(out, b[i:i+n]...)
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
