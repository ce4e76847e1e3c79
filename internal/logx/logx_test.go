package logx

import (
	"bytes"
	"strings"
	"testing"
)

// TestLevelAtRunTime: setting the Level changes what the logger and its
// children write, at once; an unknown level is refused and changes
// nothing.
func TestLevelAtRunTime(t *testing.T) {
	var buf bytes.Buffer
	log, lv, err := NewLeveled(&buf, "info")
	if err != nil {
		t.Fatal(err)
	}
	child := log.With().Str("component", "x").Logger()
	child.Debug().Msg("hidden-1")
	if err := lv.Set("debug"); err != nil || lv.String() != "debug" {
		t.Fatalf("Set(debug): %v, level %s", err, lv)
	}
	child.Debug().Msg("shown-1")
	for _, bad := range []string{"", "trace", "DEBUG", "panic", "verbose"} {
		if err := lv.Set(bad); err == nil {
			t.Fatalf("Set(%q) accepted", bad)
		}
	}
	if lv.String() != "debug" {
		t.Fatalf("a refused Set changed the level to %s", lv)
	}
	_ = lv.Set("error")
	child.Warn().Msg("hidden-2")
	log.Log().Msg("shown-2") // no level: always written
	out := buf.String()
	for _, want := range []string{"shown-1", "shown-2"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s not written:\n%s", want, out)
		}
	}
	for _, not := range []string{"hidden-1", "hidden-2"} {
		if strings.Contains(out, not) {
			t.Errorf("%s written:\n%s", not, out)
		}
	}
	if _, err := New(&buf, "loud"); err == nil {
		t.Fatal("New accepted an unknown level")
	}
}
