package launch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type plain struct{ *exec.Cmd }

func (p plain) PID() int { return p.Process.Pid }

func startPlain(cmd *exec.Cmd) (plain, error) { return plain{cmd}, cmd.Start() }

func ownScore(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Skip(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// A child started through the incubator reads its raised score as its
// first instruction, runs with the real argv (argv[0] included) and the
// environment, and sees no extra fd.
func TestIncubatorScoreArgvFds(t *testing.T) { incubators(t, scoreArgvFds) }

func scoreArgvFds(t *testing.T) {
	want := ownScore(t) + 100
	if want > 1000 {
		want = 1000
	}
	var failed atomic.Int64
	SetHeadroom(&Headroom{OOMScoreAdj: want, SetOOM: true, Failed: &failed})
	defer SetHeadroom(nil)
	u := self(t)
	out := runOutput(t, Spec{User: u, Argv: []string{"sh", "-c", `cat /proc/self/oom_score_adj; echo "$0 $X"; ls /proc/self/fd`}, Env: map[string]string{"X": "y"}})
	lines := strings.Fields(out)
	if len(lines) < 3 || lines[0] != strconv.Itoa(want) || lines[1] != "sh" || lines[2] != "y" {
		t.Fatalf("output %q: want score %d, argv[0] sh, X=y", out, want)
	}
	// The same fds as a plain exec (this test's inherited ones included).
	plain, _ := exec.Command("ls", "/proc/self/fd").Output()
	if got, want := strings.Join(lines[3:], " "), strings.Join(strings.Fields(string(plain)), " "); got != want {
		t.Errorf("the program's fds: %s, a plain exec's: %s", got, want)
	}
	if failed.Load() != 0 {
		t.Errorf("headroom failures: %d", failed.Load())
	}
}

// runOutput starts spec through Start (the incubator in use) and returns
// what it wrote to stdout and stderr (at most 4 KiB) once it has exited.
func runOutput(t *testing.T, spec Spec) string {
	t.Helper()
	c, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	c.Cmd.Stdout, c.Cmd.Stderr = w, w
	cmd, err := Start(c, startPlain)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 4096)
	n, _ := readAll(r, out)
	_ = cmd.Wait()
	return string(out[:n])
}

func readAll(r *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// The incubator's own exec failure is the error os/exec would have given:
// a script whose #! interpreter is missing, a file the kernel cannot run.
func TestIncubatorExecErrors(t *testing.T) { incubators(t, execErrors) }

func execErrors(t *testing.T) {
	u := self(t)
	dir := t.TempDir()
	noInterp := filepath.Join(dir, "nointerp")
	_ = os.WriteFile(noInterp, []byte("#!/nonexistent/sh\n"), 0o755)
	garbage := filepath.Join(dir, "garbage")
	_ = os.WriteFile(garbage, []byte{0x7f, 'E', 'L', 'F', 0, 0, 0, 0}, 0o755)
	for _, tc := range []struct {
		path  string
		kind  error
		errno syscall.Errno
	}{{noInterp, ErrNotFound, syscall.ENOENT}, {garbage, ErrNotExecutable, syscall.ENOEXEC}} {
		c, err := Build(Spec{User: u, Argv: []string{tc.path}})
		if err != nil {
			t.Fatal(err)
		}
		cmd, err := Start(c, startPlain)
		if !errors.Is(err, tc.kind) || !errors.Is(err, tc.errno) {
			t.Errorf("%s: %v, want %v (%v)", tc.path, err, tc.kind, tc.errno)
		}
		if cmd.Cmd != nil && cmd.Process != nil {
			st, _ := cmd.Process.Wait()
			if code := st.ExitCode(); code != 127 && code != 126 {
				t.Errorf("%s: the incubator exited %d, want 127 or 126", tc.path, code)
			}
		}
	}
}

// BenchmarkStartTrue: the start (to exit) of `true` as os/exec alone,
// through the Go incubator (one more exec, of the agent's binary, and its
// Go runtime start) and through the stub (one more exec, of 664 bytes).
func BenchmarkStartTrue(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	b.Run("plain", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := exec.Command(path).Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	via := func(b *testing.B, sf *os.File) {
		for i := 0; i < b.N; i++ {
			cmd, err := startVia(exec.Command(path), startPlain, sf)
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("incubator-go", func(b *testing.B) { via(b, nil) })
	b.Run("incubator-stub", func(b *testing.B) {
		sf := stubFile(startPlain)
		if sf == nil {
			_, why := Incubator()
			b.Skip("no stub: " + why)
		}
		via(b, sf)
	})
}

// BenchmarkStartTrueInterleaved: the three of BenchmarkStartTrue in one
// loop, one of each per round (a loaded machine drifts between
// sub-benchmarks), reported as the median of each in ms.
func BenchmarkStartTrueInterleaved(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	sf := stubFile(startPlain)
	if sf == nil {
		_, why := Incubator()
		b.Skip("no stub: " + why)
	}
	var ds [3][]time.Duration
	for i := 0; i < b.N; i++ {
		for j, run := range []func() error{
			func() error { return exec.Command(path).Run() },
			func() error { return viaWait(path, sf) },
			func() error { return viaWait(path, nil) },
		} {
			start := time.Now()
			if err := run(); err != nil {
				b.Fatal(err)
			}
			ds[j] = append(ds[j], time.Since(start))
		}
	}
	for j, name := range []string{"plain-ms", "stub-ms", "go-ms"} {
		sort.Slice(ds[j], func(a, c int) bool { return ds[j][a] < ds[j][c] })
		b.ReportMetric(float64(ds[j][len(ds[j])/2].Microseconds())/1000, name)
	}
}

func viaWait(path string, sf *os.File) error {
	cmd, err := startVia(exec.Command(path), startPlain, sf)
	if err != nil {
		return err
	}
	return cmd.Wait()
}
