// Package configtest runs the table test every Config.Validate has: each
// row changes a valid config and says how Validate must answer, and the
// constructor must refuse what Validate refuses. Tests only.
package configtest

import (
	"strings"
	"testing"
)

// Case is one row: Mut changes a valid config; Want is the start of the
// error Validate must return ("" for a config it must accept).
type Case[C any] struct {
	Name string
	Mut  func(*C)
	Want string
}

// Run checks each case. base returns a valid config, validate is its
// Validate, and construct builds the capability from it (returning only
// its error; nil: no constructor to check).
func Run[C any](t *testing.T, base func() C, validate func(C) error, construct func(C) error, cases []Case[C]) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			cfg := base()
			c.Mut(&cfg)
			err := validate(cfg)
			if c.Want == "" {
				if err != nil {
					t.Fatalf("a valid config refused: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.Want) {
				t.Fatalf("Validate: got %v, want %q...", err, c.Want)
			}
			if construct != nil && construct(cfg) == nil {
				t.Fatal("the constructor accepted a config Validate refuses")
			}
		})
	}
}
