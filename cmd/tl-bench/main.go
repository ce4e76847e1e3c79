// Command tl-bench measures tl-agent's data paths against OpenSSH on this
// machine and against the local floor (raw loopback, a bare PTY), in the
// same run, and prints the figures with their ratios. `make bench` runs it.
//
//	tl-bench [-only uplink,pty,...] [-quick]
//
// Each area registers its benchmarks from its own file (uplink.go, pty.go,
// ssh.go, ...). A benchmark returns Results; the runner prints one table.
// Timing lives here and never in unit tests: the machine is shared, so
// figures are read as ratios taken in one run, not as absolutes.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/integration"
)

// Result is one measured figure. Zero OpenSSH or Floor means "not
// measured for this figure".
type Result struct {
	Name    string
	Unit    string
	Ours    float64
	OpenSSH float64
	Floor   float64
	// Lower is true for latencies and memory: smaller is better.
	Lower bool
	Note  string
}

type bench struct {
	area string
	run  func(e *Env) []Result
}

var benches []bench

// register adds an area's benchmark; called from init in each file.
func register(area string, run func(e *Env) []Result) {
	benches = append(benches, bench{area, run})
}

func main() {
	only := flag.String("only", "", "comma-separated areas to run (default: all)")
	quick := flag.Bool("quick", false, "smaller transfers and fewer samples")
	flag.Parse()
	want := map[string]bool{}
	for _, a := range strings.Split(*only, ",") {
		if a != "" {
			want[a] = true
		}
	}
	sort.SliceStable(benches, func(i, j int) bool { return benches[i].area < benches[j].area })
	fmt.Printf("tl-bench: %s, %d CPUs, %s\n", runtime.Version(), runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	var all []Result
	failed := false
	for _, b := range benches {
		if len(want) > 0 && !want[b.area] {
			continue
		}
		fmt.Printf("\n== %s\n", b.area)
		e := newEnv(*quick)
		res, err := e.runSafely(b.run)
		e.cleanup()
		if err != nil {
			fmt.Printf("   FAILED: %v\n", err)
			failed = true
		}
		printResults(res)
		all = append(all, res...)
	}
	if failed {
		os.Exit(1)
	}
}

func printResults(rs []Result) {
	if len(rs) == 0 {
		return
	}
	fmt.Printf("   %-44s %14s %14s %14s %9s %9s\n", "figure", "tl-agent", "OpenSSH", "floor", "vs ssh", "vs floor")
	for _, r := range rs {
		fmt.Printf("   %-44s %14s %14s %14s %9s %9s", r.Name+" ("+r.Unit+")", num(r.Ours), num(r.OpenSSH), num(r.Floor), ratio(r.Ours, r.OpenSSH), ratio(r.Ours, r.Floor))
		if r.Note != "" {
			fmt.Printf("  %s", r.Note)
		}
		fmt.Println()
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "-"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.4f", v)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// Env is what a benchmark gets: a way to start the real system and
// OpenSSH, temp folders, and cleanup. It implements integration.TB so the
// test harness starts things exactly as the tests do.
type Env struct {
	Quick    bool
	cleanups []func()
	tmp      string
}

func newEnv(quick bool) *Env {
	dir, err := os.MkdirTemp("", "tl-bench-")
	if err != nil {
		panic(err)
	}
	return &Env{Quick: quick, tmp: dir}
}

type benchFatal struct{ msg string }

func (e *Env) runSafely(run func(*Env) []Result) (res []Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(benchFatal); ok {
				err = fmt.Errorf("%s", f.msg)
				return
			}
			panic(r)
		}
	}()
	return run(e), nil
}

func (e *Env) cleanup() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	os.RemoveAll(e.tmp)
}

// integration.TB
func (e *Env) Helper()                           {}
func (e *Env) Fatalf(format string, args ...any) { panic(benchFatal{fmt.Sprintf(format, args...)}) }
func (e *Env) Logf(format string, args ...any)   { fmt.Printf("   "+format+"\n", args...) }
func (e *Env) Cleanup(f func())                  { e.cleanups = append(e.cleanups, f) }
func (e *Env) TempDir() string {
	d, err := os.MkdirTemp(e.tmp, "t")
	if err != nil {
		e.Fatalf("tempdir: %v", err)
	}
	return d
}

// System starts tl-proxy and a sandbox (agent as PID 1) as the tests do.
func (e *Env) System(opts integration.Options) *integration.System {
	if os.Geteuid() != 0 {
		e.Fatalf("benchmarks need root (the sandbox is made of namespaces)")
	}
	// TL_BENCH_GOMAXPROCS sets GOMAXPROCS for tl-proxy and the agent only
	// (not this client or the relays of the hops area): the experiment
	// behind docs/benchmarks.md's notes on Go waking idle threads.
	if v := os.Getenv("TL_BENCH_GOMAXPROCS"); v != "" {
		os.Setenv("GOMAXPROCS", v)
		defer os.Unsetenv("GOMAXPROCS")
	}
	return integration.Start(e, opts)
}

// OpenSSH starts a throwaway sshd on loopback.
func (e *Env) OpenSSH() *integration.OpenSSH { return integration.StartOpenSSH(e) }

// Run runs a command and fails the benchmark on error, returning stdout.
func (e *Env) Run(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		e.Fatalf("%s %s: %v %s", name, strings.Join(args, " "), err, msg)
	}
	return string(out)
}

// File makes a file of size bytes of incompressible data in the temp dir.
func (e *Env) File(name string, size int64) string {
	p := filepath.Join(e.tmp, name)
	f, err := os.Create(p)
	if err != nil {
		e.Fatalf("create: %v", err)
	}
	defer f.Close()
	r, _ := os.Open("/dev/urandom")
	defer r.Close()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		if _, err := r.Read(buf[:n]); err != nil {
			e.Fatalf("urandom: %v", err)
		}
		if _, err := f.Write(buf[:n]); err != nil {
			e.Fatalf("write: %v", err)
		}
		left -= n
	}
	return p
}

// MBps converts bytes over a duration to MB/s (10^6 bytes).
func MBps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / d.Seconds() / 1e6
}

// Percentile returns the p-th percentile (0..100) of ds in milliseconds.
func Percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(s[i].Microseconds()) / 1000
}
