package monitor

import (
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// readBack undoes Printable: \\ is a backslash, \xNN the byte NN, \uNNNN
// and \UNNNNNNNN the character.
func readBack(t *testing.T, s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			i++
			continue
		}
		if i+1 >= len(s) {
			t.Fatalf("%q: a lone backslash at its end", s)
		}
		if s[i+1] == '\\' {
			b.WriteByte('\\')
			i += 2
			continue
		}
		width := map[byte]int{'x': 2, 'u': 4, 'U': 8}[s[i+1]]
		if width == 0 || i+2+width > len(s) {
			t.Fatalf("%q: escape at %d has no reading", s, i)
		}
		n, err := strconv.ParseUint(s[i+2:i+2+width], 16, 32)
		if err != nil {
			t.Fatalf("%q: escape at %d: %v", s, i, err)
		}
		if s[i+1] == 'x' {
			b.WriteByte(byte(n))
		} else {
			b.WriteRune(rune(n))
		}
		i += 2 + width
	}
	return b.String()
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"/public/a b":   "/public/a b",
		"a\tb\nc":       `a\x09b\x0ac`,
		"\u009b2J":      `\u009b2J`,
		"\xc2\x9b":      `\u009b`,
		"\x9b":          `\x9b`,
		"\u202egnp.exe": `\u202egnp.exe`,
		"\U000e0001a":   `\U000e0001a`,
		"\ue0001a":      `\ue0001a`,
		"\ufffd \xff":   "\ufffd " + `\xff`,
		"é\x00":         `é\x00`,
		`/x\u009b`:      `/x\\u009b`,
		`a\b`:           `a\\b`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzPrintable: whatever a workload sends, the view's string is UTF-8
// with nothing but graphic characters and spaces, a string that was
// already so and has no backslash is unchanged, and every string reads
// back exactly: no two show alike (a workload cannot write an escape as
// text; until 2026-12-07 the text \u009b showed as the character U+009B
// does, found by a review).
func FuzzPrintable(f *testing.F) {
	for _, s := range []string{"", "GET", `/x\u009b`, `\`, "a\x1b[2Jb", "\u009b", "\xc2", "\U000e0001a", "\ue0001a", "\ufffd\xef\xbf", "x\u202e\u2066y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Printable(s)
		if !utf8.ValidString(got) {
			t.Fatalf("Printable(%q) = %q: not UTF-8", s, got)
		}
		for _, r := range got {
			if r != ' ' && !unicode.IsGraphic(r) {
				t.Fatalf("Printable(%q) = %q holds %U", s, got, r)
			}
		}
		if utf8.ValidString(s) && strings.IndexFunc(s, notShown) < 0 && !strings.Contains(s, `\`) && got != s {
			t.Fatalf("Printable(%q) = %q: a printable string changed", s, got)
		}
		if back := readBack(t, got); back != s {
			t.Fatalf("Printable(%q) = %q reads back as %q", s, got, back)
		}
		// Cut: never longer than asked, never inside an escape or a
		// character, whole when it fits.
		max := 4 + len(s)%40
		cut := PrintableCut(s, max)
		switch {
		case len(cut) > max || !utf8.ValidString(cut):
			t.Fatalf("PrintableCut(%q, %d) = %q: too long or not UTF-8", s, max, cut)
		case len(got) <= max && cut != got:
			t.Fatalf("PrintableCut(%q, %d) = %q, want %q whole", s, max, cut, got)
		case len(got) > max:
			kept, ok := strings.CutSuffix(cut, "…")
			if !ok || !strings.HasPrefix(got, kept) || !strings.HasPrefix(s, readBack(t, kept)) {
				t.Fatalf("PrintableCut(%q, %d) = %q: not a cut of %q", s, max, cut, got)
			}
		}
	})
}

// BenchmarkPrintable escapes a 16 KiB string of control bytes (the most a
// proxy record's string holds), whole and cut as flows keep it.
func BenchmarkPrintable(b *testing.B) {
	s := strings.Repeat("\x01", 16<<10)
	b.Run("whole", func(b *testing.B) {
		for b.Loop() {
			Printable(s)
		}
	})
	b.Run("cut-2KiB", func(b *testing.B) {
		for b.Loop() {
			PrintableCut(s, 2<<10)
		}
	})
}
