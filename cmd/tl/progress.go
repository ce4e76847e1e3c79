package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

const (
	// progressMin is the size from which cp shows a bar: smaller copies end
	// before one would be read.
	progressMin = 1 << 20
	// progressEvery bounds the bar's redraws.
	progressEvery = 100 * time.Millisecond
)

// progress is a one-line bar on stderr, drawn only when stderr is a
// terminal, so pipes and logs get none.
type progress struct {
	mu    sync.Mutex
	on    bool
	name  string
	total int64 // -1: unknown
	n     int64
	start time.Time
	last  time.Time
}

func newProgress(want bool, name string, total int64) *progress {
	on := want && term.IsTerminal(int(os.Stderr.Fd())) && (total < 0 || total >= progressMin)
	return &progress{on: on, name: name, total: total, start: time.Now()}
}

func (p *progress) add(n int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n += n
	if now := time.Now(); now.Sub(p.last) >= progressEvery {
		p.last = now
		p.draw()
	}
}

// done draws the last state (when ok) and ends the line.
func (p *progress) done(ok bool) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok {
		p.draw()
	}
	fmt.Fprint(os.Stderr, "\n")
}

func (p *progress) draw() {
	secs := time.Since(p.start).Seconds()
	rate := ""
	if secs > 0 {
		rate = mib(int64(float64(p.n)/secs)) + "/s"
	}
	if p.total < 0 {
		fmt.Fprintf(os.Stderr, "\r%s  %s  %s\x1b[K", p.name, mib(p.n), rate)
		return
	}
	frac := 1.0
	if p.total > 0 {
		frac = min(float64(p.n)/float64(p.total), 1)
	}
	const width = 30
	fill := int(frac * width)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	fmt.Fprintf(os.Stderr, "\r%s [%s] %3.0f%%  %s / %s  %s\x1b[K", p.name, bar, frac*100, mib(p.n), mib(p.total), rate)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
