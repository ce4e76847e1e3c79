package config

import (
	"testing"
	"time"
)

func TestNonNegative(t *testing.T) {
	for _, c := range []struct {
		name   string
		fields []Field
		want   string
	}{
		{"none", nil, ""},
		{"zero and positive", []Field{Int("A", 0), Int("B", 3), Duration("C", 0), Duration("D", time.Second)}, ""},
		{"negative int", []Field{Int("A", 1), Int("B", -2)}, "B is -2: must not be negative"},
		{"negative duration", []Field{Duration("Grace", -5*time.Second)}, "Grace is -5s: must not be negative"},
		{"the first one is named", []Field{Int("A", -1), Int("B", -2)}, "A is -1: must not be negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := NonNegative(c.fields...)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}
