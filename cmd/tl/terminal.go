package main

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/term"
)

// localTerm is the terminal the CLI runs on (stdin).
type localTerm struct {
	fd      int
	once    sync.Once
	restore func()
}

func stdinTerm() (*localTerm, bool) {
	fd := int(os.Stdin.Fd())
	return &localTerm{fd: fd, restore: func() {}}, term.IsTerminal(fd)
}

// size is the terminal's columns and rows (80x24 when unknown).
func (t *localTerm) size() (cols, rows int) {
	cols, rows, err := term.GetSize(t.fd)
	if err != nil || cols <= 0 || rows <= 0 {
		return 80, 24
	}
	return cols, rows
}

// raw puts the terminal in raw mode: no echo, no line editing, and no
// signals from keys, so Ctrl-C, Ctrl-Z and Ctrl-\ reach the remote side as
// bytes. Restore puts back the saved state, once, whichever path ends the
// session first.
func (t *localTerm) raw() error {
	old, err := term.MakeRaw(t.fd)
	if err != nil {
		return fmt.Errorf("cannot put the terminal in raw mode: %v", err)
	}
	t.restore = func() { t.once.Do(func() { _ = term.Restore(t.fd, old) }) }
	return nil
}

func (t *localTerm) Restore() { t.restore() }

// noDetach disables the detach key.
const noDetach = -1

// parseDetachKey reads "ctrl-<c>" (c one of @ A-Z [ \ ] ^ _, any case),
// or "none". The default, ctrl-], is telnet's escape: rare in shells and
// editors, unlike ctrl-p/ctrl-q (docker) or ~. (ssh, which needs a line
// start the CLI cannot see).
func parseDetachKey(s string) (int, error) {
	if strings.EqualFold(s, "none") {
		return noDetach, nil
	}
	rest, ok := strings.CutPrefix(strings.ToLower(s), "ctrl-")
	if ok && len(rest) == 1 {
		c := strings.ToUpper(rest)[0]
		if c >= '@' && c <= '_' {
			return int(c & 0x1f), nil
		}
	}
	return 0, usageErrorf("--detach-key %q: use ctrl-<key> (a letter or one of @[\\]^_) or none", s)
}

func detachKeyName(k int) string {
	if k == noDetach {
		return "none"
	}
	return "ctrl-" + strings.ToLower(string(rune(k|0x40)))
}
