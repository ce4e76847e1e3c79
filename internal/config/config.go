// Package config is the one check the capabilities' Config.Validate
// share. Every Config has the same shape (yamux's): documented fields, a
// DefaultConfig, and a Validate that the constructor calls and whose error
// it returns. A bound or a timeout is never negative: a negative value is
// refused, never silently turned into a default; zero takes the
// documented default where the field says so.
//
// Messages name the Go field, never a command-line flag: the CLI (cmd/,
// agent/config.go) maps its flags to fields and may name them in its own.
package config

import (
	"fmt"
	"time"
)

// Field is one numeric field of a Config, by its Go name.
type Field struct {
	name string
	v    int64
	dur  bool
}

// Int is an integer field.
func Int[T ~int | ~int32 | ~int64](name string, v T) Field { return Field{name: name, v: int64(v)} }

// Duration is a time.Duration field.
func Duration(name string, v time.Duration) Field { return Field{name: name, v: int64(v), dur: true} }

// NonNegative returns an error naming the first negative field, or nil.
func NonNegative(fields ...Field) error {
	for _, f := range fields {
		if f.v >= 0 {
			continue
		}
		if f.dur {
			return fmt.Errorf("%s is %v: must not be negative", f.name, time.Duration(f.v))
		}
		return fmt.Errorf("%s is %d: must not be negative", f.name, f.v)
	}
	return nil
}
