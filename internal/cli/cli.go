// Package cli binds command-line flags that each have an environment
// variable twin, so runtimes that configure by env (Kubernetes, container
// engines) and people at a shell use the same knobs. A flag given on the
// command line wins over its variable.
package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// FlagSet is a flag.FlagSet whose flags remember their env twin.
type FlagSet struct {
	*flag.FlagSet
	prefix string
	envs   map[string]string // flag name -> env var
}

// New returns a flag set for a program; env vars are PREFIX_NAME with the
// flag's dashes as underscores.
func New(program, prefix string) *FlagSet {
	fs := &FlagSet{FlagSet: flag.NewFlagSet(program, flag.ContinueOnError), prefix: prefix, envs: map[string]string{}}
	return fs
}

// EnvName is the variable twin of a flag.
func (f *FlagSet) EnvName(name string) string {
	return f.prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func (f *FlagSet) reg(name string) string {
	env := f.EnvName(name)
	f.envs[name] = env
	return env
}

// String defines a string flag.
func (f *FlagSet) String(p *string, name, def, usage string) {
	f.StringVar(p, name, def, usage+" [$"+f.reg(name)+"]")
}

// Int defines an int flag.
func (f *FlagSet) Int(p *int, name string, def int, usage string) {
	f.IntVar(p, name, def, usage+" [$"+f.reg(name)+"]")
}

// Bool defines a bool flag.
func (f *FlagSet) Bool(p *bool, name string, def bool, usage string) {
	f.BoolVar(p, name, def, usage+" [$"+f.reg(name)+"]")
}

// Duration defines a duration flag.
func (f *FlagSet) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	f.DurationVar(p, name, def, usage+" [$"+f.reg(name)+"]")
}

// Parse applies environment twins first, then the command line.
func (f *FlagSet) Parse(args []string) error {
	names := make([]string, 0, len(f.envs))
	for n := range f.envs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if v, ok := os.LookupEnv(f.envs[n]); ok {
			if err := f.Set(n, v); err != nil {
				return fmt.Errorf("$%s: %w", f.envs[n], err)
			}
		}
	}
	return f.FlagSet.Parse(args)
}

// Usage prints a header and the flags.
func (f *FlagSet) Usage(w io.Writer, header string) {
	fmt.Fprintln(w, strings.TrimSpace(header))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags (each also read from the environment variable in brackets):")
	f.SetOutput(w)
	f.PrintDefaults()
}

// Atoi is strconv.Atoi with a message naming what was parsed.
func Atoi(what, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", what, s)
	}
	return n, nil
}
