package clustermesh

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A burst of warnings is logged, the rest left out until the rate allows
// one, which says how many were.
func TestWarningsBounded(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	w := NewWarnings(500*time.Millisecond, 3) // the 100 calls take well under the interval
	for range 100 {
		w.Warn("refused", "key", "k")
	}
	if n := strings.Count(buf.String(), "refused"); n != 3 {
		t.Fatalf("%d of 100 warnings logged at once, want the burst of 3:\n%s", n, &buf)
	}
	time.Sleep(600 * time.Millisecond)
	w.Warn("refused", "key", "k")
	if !strings.Contains(buf.String(), "notLogged=97") {
		t.Fatalf("the line after the gap does not count the 97 left out:\n%s", &buf)
	}
}
