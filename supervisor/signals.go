package supervisor

import (
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Signal policy. PID 1 gets no default action from the kernel, but the Go
// runtime installs its own: without Notify, SIGHUP, SIGINT and SIGTERM make
// Go exit, SIGQUIT, SIGABRT, SIGSYS, SIGTRAP, SIGILL and SIGSTKFLT (and
// SIGSEGV, SIGBUS, SIGFPE sent by kill) make it crash with a traceback, and
// SIGPIPE on stdout or stderr kills it. So every catchable signal is
// notified here and given a role; none is ignored with signal.Ignore,
// because an ignored disposition is inherited across exec and would reach
// every process the agent starts (a shell ignoring SIGPIPE never ends
// `yes | head`).
var (
	// shutdownSignals start the orderly shutdown.
	shutdownSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	// forwardSignals go to the main command's process group, as tini
	// forwards them, and are otherwise dropped.
	forwardSignals = []os.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}
	// droppedSignals are received and logged only: SIGPIPE so a closed
	// console cannot kill us; the job-control stops so PID 1 is never
	// stopped; the fault signals only ever sent by kill(2) (real faults
	// still panic); the rest have no meaning for the agent. SIGCHLD is the
	// reaper's, SIGPROF and SIGURG the Go runtime's.
	droppedSignals = []os.Signal{
		syscall.SIGPIPE, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGCONT,
		syscall.SIGALRM, syscall.SIGVTALRM, syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGIO, syscall.SIGPWR,
		syscall.SIGABRT, syscall.SIGSYS, syscall.SIGTRAP, syscall.SIGILL, syscall.SIGSTKFLT,
		syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE,
	}
)

// Signals receives every signal that could end or stop the agent and
// routes it: SIGTERM and SIGINT to Shutdown, the forwardable ones to the
// main command, the rest to the log.
type Signals struct {
	log      zerolog.Logger
	ch       chan os.Signal
	shutdown chan os.Signal // gets the first shutdown signal
	stop     chan struct{}
	done     chan struct{}

	mu   sync.Mutex
	main *Proc // guarded by mu; where forwardable signals go

	requested atomic.Bool // a shutdown signal came (ShutdownRequested)
}

// HandleSignals installs the policy. Call it first thing in main, so no
// signal arrives before it is in place.
func HandleSignals(log zerolog.Logger) *Signals {
	s := &Signals{
		log:      log.With().Str("component", "signals").Logger(),
		ch:       make(chan os.Signal, 16),
		shutdown: make(chan os.Signal, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	all := append(append(append([]os.Signal{}, shutdownSignals...), forwardSignals...), droppedSignals...)
	// Real-time signals (34..64) are ignored by Go unless notified; they
	// cannot hurt us and are left alone.
	signal.Notify(s.ch, all...)
	go s.loop()
	return s
}

// ShutdownRequested reports whether a SIGTERM or SIGINT came: a live
// upgrade does not exec once one did (the new binary would never see it).
func (s *Signals) ShutdownRequested() bool { return s.requested.Load() }

// Shutdown delivers the first SIGTERM or SIGINT received.
func (s *Signals) Shutdown() <-chan os.Signal { return s.shutdown }

// ForwardTo names the main command as the target of forwarded signals
// (nil: none).
func (s *Signals) ForwardTo(p *Proc) {
	s.mu.Lock()
	s.main = p
	s.mu.Unlock()
}

// Stop ends routing. Signals stay caught (dropped) until the process
// exits, so a late SIGTERM cannot kill PID 1 mid-shutdown.
func (s *Signals) Stop() {
	close(s.stop)
	<-s.done
}

func (s *Signals) loop() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case sig := <-s.ch:
			s.route(sig.(syscall.Signal))
		}
	}
}

func (s *Signals) route(sig syscall.Signal) {
	name := unix.SignalName(sig)
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
		s.requested.Store(true)
		select {
		case s.shutdown <- sig:
			s.log.Info().Str("signal", name).Msg("shutdown requested")
		default:
			s.log.Info().Str("signal", name).Msg("shutdown already under way")
		}
		return
	case syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH:
		s.mu.Lock()
		p := s.main
		s.mu.Unlock()
		if p != nil {
			if err := p.SignalGroup(sig); err == nil {
				s.log.Info().Str("signal", name).Int("pid", p.Pid).Msg("signal forwarded to main command")
				return
			}
		}
	}
	if sig == syscall.SIGPIPE || sig == syscall.SIGWINCH {
		return // routine; not worth a log line each
	}
	s.log.Info().Str("signal", name).Msg("signal ignored")
}
