// Package logx builds the zerolog logger both binaries use: JSON to stderr,
// or human-readable console lines when stderr is a terminal, at a level
// that can change while the program runs (Level).
package logx

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// New returns a logger at level ("debug", "info", "warn", "error").
func New(w io.Writer, level string) (zerolog.Logger, error) {
	log, _, err := NewLeveled(w, level)
	return log, err
}

// NewLeveled is New, and the Level the logger and all its children
// consult on every event: setting it changes what they write at once.
func NewLeveled(w io.Writer, level string) (zerolog.Logger, *Level, error) {
	lv := &Level{}
	if err := lv.Set(level); err != nil {
		return zerolog.Nop(), nil, err
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		w = zerolog.ConsoleWriter{Out: f, TimeFormat: "15:04:05.000"}
	}
	// The logger's own level is the lowest one Level accepts; Level, as
	// the logger's sampler, decides per event before anything is built,
	// so a suppressed event costs what a level check does.
	return zerolog.New(w).Level(zerolog.DebugLevel).Sample(lv).With().Timestamp().Logger(), lv, nil
}

// Level is a logger's level, safe to read and set from any goroutine. It
// is a zerolog.Sampler: zerolog asks it about every event after its own
// (fixed, lowest) level check. Events with no level (Logger.Log) are
// always written.
type Level struct {
	v atomic.Int32 // a zerolog.Level
}

// Levels are the accepted level names, lowest first.
var Levels = []string{"debug", "info", "warn", "error"}

// Set changes the level to name, one of Levels; anything else is refused
// and the level is unchanged.
func (l *Level) Set(name string) error {
	for _, n := range Levels {
		if name == n {
			lvl, _ := zerolog.ParseLevel(n)
			l.v.Store(int32(lvl))
			return nil
		}
	}
	return fmt.Errorf("log level %q: want debug, info, warn or error", name)
}

// String is the current level's name.
func (l *Level) String() string { return zerolog.Level(l.v.Load()).String() }

// Sample reports whether an event at lvl is written (zerolog.Sampler).
func (l *Level) Sample(lvl zerolog.Level) bool { return lvl >= zerolog.Level(l.v.Load()) }
