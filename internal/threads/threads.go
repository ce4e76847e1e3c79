// Package threads keeps the agent alive when its sandbox has used up its
// pids budget.
//
// Inside a container the agent's OS threads count against the same pids
// limit as the workload, and the Go runtime aborts the whole process
// (`fatal error: newosproc`) when it cannot create a thread it needs: a
// fork bomb plus a few blocking syscalls kills PID 1. Two things together
// make sure the runtime never has to create a thread under load:
//
//   - Reserve, at start, makes the runtime create a number of threads
//     while the kernel still allows it (ReserveInBackground: beside the
//     rest of the start-up, with every fork waiting for it). The runtime never ends an idle
//     thread (it parks it on its idle list and reuses it before creating
//     a new one), so the reserve stays for the agent's life.
//   - Gate bounds the blocking syscalls made on behalf of requests (file
//     I/O of the files API, opens, directory reads). A goroutine waiting
//     for the gate is parked on a channel and holds no thread; only those
//     inside hold one each. The gate is smaller than the reserve by more
//     than the threads the runtime uses for itself (GOMAXPROCS running Go
//     code, sysmon, the netpoller's waiter), so the idle list is never
//     empty when a syscall blocks.
//
// Forks are already serialized by the reaper's lock (one thread at most).
// debug.SetMaxThreads is no help: it only turns the abort into another.
package threads

import (
	"bufio"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Defaults, chosen from measurements under a fork bomb with 16 concurrent
// API clients (docs/supervisor.md has the figures): without a reserve the
// agent aborted wanting its 9th thread; with 16 (22 threads in all) it
// never needed another. 32 is twice that, and costs the sandbox 32 pids.
const (
	DefaultReserve  = 32
	DefaultBlocking = 8
)

// Reserve makes the process hold at least n OS threads, so the runtime
// finds idle ones later instead of creating them. It locks n goroutines to
// n distinct threads at once (a locked goroutine's thread runs nothing
// else, so the runtime must create one per goroutine), then unlocks them:
// the threads go to the runtime's idle list, where they stay. It returns
// the process's thread count afterwards (0 when /proc is not readable).
// Call it at start, before the workload can fill the pids limit. (One
// goroutine after the other, each once the previous one held its thread,
// was slower on a loaded machine: 17 against 14 ms after exec, p50.)
func Reserve(n int) int {
	var ready sync.WaitGroup
	release := make(chan struct{})
	done := make(chan struct{}, n)
	ready.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread()
			ready.Done()
			<-release
			// Unlock before returning: a goroutine that ends locked takes
			// its thread with it.
			runtime.UnlockOSThread()
			done <- struct{}{}
		}()
	}
	ready.Wait()
	close(release)
	for i := 0; i < n; i++ {
		<-done
	}
	return Count()
}

// reserving is closed once the start-up reserve is made. Until
// ReserveInBackground is called there is nothing to wait for.
var reserving atomic.Pointer[chan struct{}]

// ReserveInBackground makes Reserve(n) on its own goroutine and returns at
// once, so the start-up's other work (provisioning, the uplink's dial and
// handshake) runs meanwhile; done, if not nil, gets the thread count
// afterwards. Until the reserve is made WaitReserve blocks: whatever lets
// the workload use up pids (a fork) calls it first, so the workload still
// never runs before the agent holds its threads. Call it once, at start.
//
// The reserve starts when start is closed (nil: at once): the agent lets
// the uplink's handshake go first, as the reserve keeps a P busy and a
// goroutine woken by the network waits for a free one.
func ReserveInBackground(n int, start <-chan struct{}, done func(threads int)) {
	ch := make(chan struct{})
	reserving.Store(&ch)
	go func() {
		if start != nil {
			<-start
		}
		got := Reserve(n)
		close(ch)
		if done != nil {
			done(got)
		}
	}()
}

// WaitReserve returns once the reserve started by ReserveInBackground is
// made (at once when none was started).
func WaitReserve() {
	if ch := reserving.Load(); ch != nil {
		<-*ch
	}
}

// Headroom is how many more tasks (processes and threads) the pids
// cgroup this process is in allows now, or -1 when there is no limit or
// it cannot be read (cgroup v2, then v1 layout). Reserve takes no more
// than that: a thread the kernel refuses during the reserve would abort
// the agent at start, the very thing the reserve is for.
func Headroom() int {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/pids"} {
		max, err1 := os.ReadFile(dir + "/pids.max")
		cur, err2 := os.ReadFile(dir + "/pids.current")
		if err1 != nil || err2 != nil {
			continue
		}
		m, err := strconv.Atoi(strings.TrimSpace(string(max)))
		if err != nil { // "max": no limit
			return -1
		}
		c, _ := strconv.Atoi(strings.TrimSpace(string(cur)))
		return m - c
	}
	return -1
}

// Count is the number of threads of this process (/proc/self/status), or
// 0 when it cannot be read.
func Count() int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// Gate bounds how many goroutines are inside blocking syscalls at once.
type Gate struct{ slots chan struct{} }

// NewGate returns a gate letting n callers in at a time (at least 1).
func NewGate(n int) *Gate {
	if n < 1 {
		n = 1
	}
	return &Gate{slots: make(chan struct{}, n)}
}

// Blocking is the process-wide gate for blocking syscalls made on behalf
// of requests. It is one per process because OS threads are: every
// capability that blocks shares it.
var Blocking = NewGate(DefaultBlocking)

// Enter waits for a slot; Leave gives it back.
func (g *Gate) Enter() { g.slots <- struct{}{} }

// Leave gives back a slot taken by Enter.
func (g *Gate) Leave() { <-g.slots }

// Do runs f holding a slot.
func (g *Gate) Do(f func() error) error {
	g.Enter()
	defer g.Leave()
	return f()
}

// InUse is the number of slots taken now.
func (g *Gate) InUse() int { return len(g.slots) }

// Size is the number of slots.
func (g *Gate) Size() int { return cap(g.slots) }

// Reader wraps r so that each Read holds a slot (a file being downloaded:
// the slot is not held while the network side waits).
func (g *Gate) Reader(r io.Reader) io.Reader { return gatedReader{g, r} }

// Writer wraps w so that each Write holds a slot.
func (g *Gate) Writer(w io.Writer) io.Writer { return gatedWriter{g, w} }

type gatedReader struct {
	g *Gate
	r io.Reader
}

func (r gatedReader) Read(p []byte) (int, error) {
	r.g.Enter()
	defer r.g.Leave()
	return r.r.Read(p)
}

type gatedWriter struct {
	g *Gate
	w io.Writer
}

func (w gatedWriter) Write(p []byte) (int, error) {
	w.g.Enter()
	defer w.g.Leave()
	return w.w.Write(p)
}
