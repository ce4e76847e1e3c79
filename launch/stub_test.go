package launch

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tensorlake/tl-agent/identity"
	"golang.org/x/sys/unix"
)

// incubators runs f once through the stub and once through the Go
// incubator (the stub turned off for its duration).
func incubators(t *testing.T, f func(t *testing.T)) {
	t.Run("stub", func(t *testing.T) {
		needStub(t)
		f(t)
		if kind, why := Incubator(); kind != "stub" {
			t.Errorf("the stub was turned off: %s", why)
		}
	})
	t.Run("go", func(t *testing.T) {
		goIncubator(t)
		f(t)
	})
}

// needStub skips t where the stub cannot run, and fails it where it
// should (an architecture with a blob, memfds executable) but does not.
func needStub(t *testing.T) {
	t.Helper()
	if stubFile(startPlain) != nil {
		return
	}
	_, why := Incubator()
	if len(stubELF) > 0 && noexecNote() == "" {
		t.Fatal("the stub is off where it should run: " + why)
	}
	t.Skip("no stub here: " + why)
}

// goIncubator turns the stub off until t ends (tests in this package do
// not run in parallel).
func goIncubator(t *testing.T) {
	file, off, reason := stub.file.Load(), stub.off.Load(), stub.reason.Load()
	t.Cleanup(func() { stub.file.Store(file); stub.off.Store(off); stub.reason.Store(reason) })
	stubOff("test")
}

// withStub makes blob the stub until t ends, as the first start would
// (makeStub, then the probe), and returns what the probe said.
func withStub(t *testing.T, blob []byte) (decided bool, err error) {
	saved, file, off, reason := stubELF, stub.file.Load(), stub.off.Load(), stub.reason.Load()
	t.Cleanup(func() {
		stubELF = saved
		stub.file.Store(file)
		stub.off.Store(off)
		stub.reason.Store(reason)
	})
	stubELF = blob
	f, err := makeStub()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return probeStub(f, startPlain)
}

// The stub's memfd is sealed: no write, no resize, no chmod, no new seal.
func TestStubSealed(t *testing.T) {
	needStub(t)
	f := stubFile(startPlain)
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		t.Errorf("seals %#x, want at least %#x", seals, want)
	}
	if _, err := f.WriteAt([]byte{0}, 0); err == nil {
		t.Error("a write to the sealed stub succeeded")
	}
	w, err := os.OpenFile("/proc/self/fd/"+itoa(f.Fd()), os.O_WRONLY, 0)
	if err == nil {
		_, err = w.Write([]byte{0})
		w.Close()
	}
	if err == nil {
		t.Error("a write through a new fd of the sealed stub succeeded")
	}
	got, err := os.ReadFile("/proc/self/fd/" + itoa(f.Fd()))
	if err != nil || !bytes.Equal(got, stubELF) {
		t.Errorf("the memfd holds %d bytes (%v), the blob %d", len(got), err, len(stubELF))
	}
}

func itoa(fd uintptr) string { return strconv.Itoa(int(fd)) }

// A stub the probe cannot trust is never used: a memfd the kernel will
// not exec (no execute bit, as a policy on memfds refuses it: EACCES), a
// file it cannot run (ENOEXEC), a program that ignores the protocol
// (/bin/true: EOF, no errno). The Go incubator then starts commands.
func TestStubProbeRefuses(t *testing.T) {
	truth, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip(err)
	}
	for _, tc := range []struct {
		name string
		blob []byte
		mode os.FileMode
	}{{"noexec", stubELF, 0o644}, {"garbage", []byte("#\x00 not a program"), 0o755}, {"true", truth, 0o755}} {
		fd, err := unix.MemfdCreate("tl-test-"+tc.name, unix.MFD_CLOEXEC)
		if err != nil {
			t.Skip(err)
		}
		f := os.NewFile(uintptr(fd), tc.name)
		if _, err := f.Write(tc.blob); err != nil {
			t.Fatal(err)
		}
		if err := f.Chmod(tc.mode); err != nil {
			t.Fatal(err)
		}
		if decided, err := probeStub(f, startPlain); err == nil || !decided {
			t.Errorf("%s: the probe passed it (%v, decided %v)", tc.name, err, decided)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
		f.Close()
	}
}

// The stub as a user other than the agent's: it drops to the user in the
// fork, then must still find itself at /proc/self/fd/4 (a process that
// changed its uid is not dumpable; /proc lets it see its own fds).
func TestStubAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start as another user")
	}
	needStub(t)
	u := &identity.User{Name: "nobody", UID: 65534, GID: 65534, Home: "/nonexistent", Shell: "/bin/sh"}
	out := runOutput(t, Spec{User: u, Argv: []string{"sh", "-c", "id -u; ls /proc/self/fd"}})
	if f := strings.Fields(out); len(f) == 0 || f[0] != "65534" {
		t.Errorf("output %q, want uid 65534", out)
	}
	if kind, why := Incubator(); kind != "stub" {
		t.Errorf("the stub was turned off for another user: %s", why)
	}
}

// The agent's own binary (/proc/self/exe, the sftp-server re-exec) is
// started through the Go incubator: inside the stub that name is the stub.
func TestStubSelfExe(t *testing.T) {
	c := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd, err := StartCmd(c, startPlain)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("/proc/self/exe -test.run=^$: %v", err)
	}
}

// The blobs are what stub/build.sh makes of stub/incubator.c with the
// compilers named in stub/VERSIONS; with other compilers (or versions)
// the bytes may differ, and the fresh build is run instead (for the
// machine's own architecture), so a changed source is still tested.
func TestStubReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the stub")
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "stub/build.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, b)
	} else if len(b) > 0 {
		t.Logf("build.sh: %s", b)
	}
	want, _ := os.ReadFile("stub/VERSIONS")
	got, _ := os.ReadFile(filepath.Join(out, "VERSIONS"))
	for _, arch := range []string{"amd64", "arm64"} {
		fresh, err := os.ReadFile(filepath.Join(out, "incubator-"+arch))
		if err != nil {
			t.Logf("%s: not built here", arch)
			continue
		}
		if line(got, arch) != line(want, arch) {
			t.Logf("%s: compiler %q, the blob's %q: not compared", arch, line(got, arch), line(want, arch))
			if arch == runtime.GOARCH {
				if decided, err := withStub(t, fresh); err != nil {
					t.Errorf("the fresh %s stub fails its probe: %v (decided %v)", arch, err, decided)
				}
			}
			continue
		}
		blob, err := os.ReadFile("stub/incubator-" + arch)
		if err != nil || !bytes.Equal(blob, fresh) {
			t.Errorf("stub/incubator-%s is not what build.sh makes of incubator.c (%v): run `make incubator`", arch, err)
		}
	}
}

func line(versions []byte, arch string) string {
	for _, l := range strings.Split(string(versions), "\n") {
		if a, v, ok := strings.Cut(l, " "); ok && a == arch {
			return v
		}
	}
	return ""
}

// The arm64 stub under qemu-user (where installed): the probe's path, a
// failed exec answered with ENOENT on fd 3, and a successful one (qemu
// execs the host's program natively) answered by EOF.
func TestStubArm64(t *testing.T) {
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Skip("no qemu-aarch64-static")
	}
	blob := "stub/incubator-arm64"
	for _, tc := range []struct {
		path string
		want error
	}{{"", syscall.ENOENT}, {"/nonexistent/x", syscall.ENOENT}, {"/bin/true", nil}} {
		// qemu's guest argv is [blob, path, x]: the stub's own shape.
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		_ = unix.SetNonblock(fds[0], true)
		ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
		cmd := exec.Command(qemu, blob, tc.path, "x")
		cmd.ExtraFiles = []*os.File{theirs}
		err = cmd.Start()
		theirs.Close()
		if err != nil {
			t.Fatal(err)
		}
		err = execStatus(ours, tc.path)
		ours.Close()
		if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
			t.Errorf("%q: %v, want %v", tc.path, err, tc.want)
		}
		_ = cmd.Wait()
	}
}

// A probe whose start failed for want of resources (a fork bomb filling
// the pids cgroup at the first start) keeps the stub undecided however
// often; one that failed otherwise (the shutdown) is tried stubProbes
// times, then the Go incubator is kept.
func TestStubProbeUndecided(t *testing.T) {
	needStub(t)
	file, off, reason := stub.file.Load(), stub.off.Load(), stub.reason.Load()
	t.Cleanup(func() { stub.file.Store(file); stub.off.Store(off); stub.reason.Store(reason); stub.probes = 0 })
	reset := func() { stub.file.Store(nil); stub.off.Store(false); stub.probes = 0 }
	failWith := func(err error) func(*exec.Cmd) (plain, error) {
		return func(c *exec.Cmd) (plain, error) {
			return plain{c}, &os.PathError{Op: "fork/exec", Path: c.Path, Err: err}
		}
	}
	reset()
	for i := 0; i < 2*stubProbes; i++ {
		if stubFile(failWith(syscall.EAGAIN)) != nil {
			t.Fatal("a stub from a failed probe")
		}
	}
	if kind, why := Incubator(); kind != "" {
		t.Errorf("after probes that found no pid: %q (%s), want undecided", kind, why)
	}
	if stubFile(startPlain) == nil {
		t.Error("no stub once the probe could start")
	}
	reset()
	for i := 0; i < stubProbes; i++ {
		stubFile(func(c *exec.Cmd) (plain, error) { return plain{c}, errors.New("shutting down") })
	}
	if kind, why := Incubator(); kind != "go" || !strings.Contains(why, "shutting down") {
		t.Errorf("after %d probes that could not start: %q (%s), want go", stubProbes, kind, why)
	}
}

// Concurrent starts, the first ones racing to make and probe the stub:
// one stub, every command runs (run with -race).
func TestStubConcurrentStarts(t *testing.T) {
	needStub(t)
	file, off, reason := stub.file.Load(), stub.off.Load(), stub.reason.Load()
	t.Cleanup(func() { stub.file.Store(file); stub.off.Store(off); stub.reason.Store(reason) })
	stub.file.Store(nil)
	stub.off.Store(false)
	errs := make(chan error, 16)
	for i := 0; i < cap(errs); i++ {
		go func() {
			cmd, err := StartCmd(exec.Command("true"), startPlain)
			if err == nil {
				err = cmd.Wait()
			}
			errs <- err
		}()
	}
	for i := 0; i < cap(errs); i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if kind, why := Incubator(); kind != "stub" {
		t.Errorf("incubator %q (%s), want stub", kind, why)
	}
}

// The stub as another user waits undumpable (its memfd is execute-only):
// its /proc files are root's, so that user's other processes cannot
// ptrace it or write its memory before the agent moved it. The Go
// incubator, a readable binary, waits dumpable (logged, not asserted).
func TestStubNotDumpable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start as another user")
	}
	needStub(t)
	for _, tc := range []struct {
		name string
		sf   *os.File
	}{{"stub", stubFile(startPlain)}, {"go", nil}} {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		p, ours, err := fork(cmd, startPlain, tc.sf)
		if err != nil {
			t.Fatal(err)
		}
		// Blocked in read(3) until ours closes: the waiting incubator.
		var st syscall.Stat_t
		err = syscall.Stat("/proc/"+strconv.Itoa(p.PID())+"/mem", &st)
		ours.Close()
		_ = p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: the waiting incubator's /proc/pid/mem is uid %d's", tc.name, st.Uid)
		if tc.name == "stub" && st.Uid != 0 {
			t.Errorf("the waiting stub is dumpable: /proc/pid/mem owned by uid %d", st.Uid)
		}
	}
	// Its program is dumpable as any (core dumps, the user's debugger).
	cmd := exec.Command("/bin/sleep", "5")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	p, err := StartCmd(cmd, startPlain)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	err = syscall.Stat("/proc/"+strconv.Itoa(p.PID())+"/mem", &st)
	_ = p.Process.Kill()
	_ = p.Wait()
	if err != nil || st.Uid != 65534 {
		t.Errorf("the program's /proc/pid/mem: uid %d (%v), want 65534's (dumpable)", st.Uid, err)
	}
}
