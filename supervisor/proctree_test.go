package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestOOMFile: the counter file under cgroup v2 (namespaced or not) and
// v1, including v1 in a container, where /proc/self/cgroup names the
// host's path and the mount shows the container's own cgroup at its root.
func TestOOMFile(t *testing.T) {
	cases := []struct {
		name, cgroup, mountinfo string
		have                    []string
		want                    string
	}{
		{"v2 namespaced", "0::/\n", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			[]string{"/sys/fs/cgroup/memory.events"}, "/sys/fs/cgroup/memory.events"},
		{"v2 host path", "0::/system.slice/x.scope\n", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			[]string{"/sys/fs/cgroup/system.slice/x.scope/memory.events"}, "/sys/fs/cgroup/system.slice/x.scope/memory.events"},
		{"v2 mount root is our cgroup", "0::/docker/abc\n", "30 1 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			[]string{"/sys/fs/cgroup/memory.events"}, "/sys/fs/cgroup/memory.events"},
		{"v1 in a container", "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
			"40 30 0:35 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
			[]string{"/sys/fs/cgroup/memory/memory.oom_control"}, "/sys/fs/cgroup/memory/memory.oom_control"},
		{"v1 joined controllers, no mountinfo", "5:memory,hugetlb:/job\n", "",
			[]string{"/sys/fs/cgroup/memory/job/memory.oom_control"}, "/sys/fs/cgroup/memory/job/memory.oom_control"},
		{"hybrid: v2 without memory, v1 memory", "4:memory:/\n0::/\n",
			"30 1 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n40 1 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
			[]string{"/sys/fs/cgroup/memory/memory.oom_control"}, "/sys/fs/cgroup/memory/memory.oom_control"},
		{"none", "", "", nil, ""},
	}
	for _, c := range cases {
		have := map[string]bool{}
		for _, f := range c.have {
			have[f] = true
		}
		if got := oomFile(c.cgroup, c.mountinfo, func(f string) bool { return have[f] }); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "memory.events")
	if err := os.WriteFile(f, []byte("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := (&OOMCounter{file: f}).Count(); n != 2 {
		t.Fatalf("count %d, want 2", n)
	}
	if n := (&OOMCounter{}).Count(); n != -1 {
		t.Fatalf("no file: count %d, want -1", n)
	}
}

// TestKillScopes: each scope reaches what it names and nothing else.
func TestKillScopes(t *testing.T) {
	r := NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	defer close(stop)
	start := func(attr *syscall.SysProcAttr, env ...string) *Proc {
		t.Helper()
		cmd := exec.Command("/bin/sleep", "100")
		cmd.SysProcAttr = attr
		cmd.Env = env
		p, err := r.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Signal(syscall.SIGKILL) })
		return p
	}
	group := start(&syscall.SysProcAttr{Setpgid: true})
	session := start(&syscall.SysProcAttr{Setsid: true})
	marked := start(&syscall.SysProcAttr{Setsid: true}, "TL_TEST_MARK=7")
	bystander := start(&syscall.SysProcAttr{Setsid: true}, "TL_TEST_MARK=77")
	waitExec := func(p *Proc) {
		for i := 0; i < 200; i++ {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/cmdline"); len(b) > 0 && string(b[:len("/bin/sleep")]) == "/bin/sleep" {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("pid %d never ran sleep", p.Pid)
	}
	for _, p := range []*Proc{group, session, marked, bystander} {
		waitExec(p)
	}
	for _, c := range []struct {
		name string
		sc   Scope
		p    *Proc
	}{
		{"group", Scope{Group: group.Pid}, group},
		{"session", Scope{Session: session.Pid}, session},
		{"env", Scope{Env: "TL_TEST_MARK=7"}, marked},
	} {
		if n := Kill(syscall.SIGKILL, c.sc); n < 1 {
			t.Errorf("%s: signalled %d", c.name, n)
		}
		select {
		case <-c.p.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: process not killed", c.name)
		}
	}
	// Several scopes in one call (one walk): both sessions end.
	a, b := start(&syscall.SysProcAttr{Setsid: true}), start(&syscall.SysProcAttr{Setsid: true})
	waitExec(a)
	waitExec(b)
	if n := Kill(syscall.SIGKILL, Scope{Session: a.Pid}, Scope{Session: b.Pid}); n < 2 {
		t.Errorf("two sessions: signalled %d", n)
	}
	for _, p := range []*Proc{a, b} {
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("two sessions: a process not killed")
		}
	}
	if _, ok := bystander.Exited(); ok {
		t.Fatal("a process outside every scope was killed")
	}
	if n := Kill(syscall.SIGKILL, Scope{Group: 1, Session: 1}); n != 0 {
		t.Fatalf("scope of pid 1 signalled %d", n)
	}
}

// TestKillDescendants: a tree is reached below its root, also past a
// child that left the root's group.
func TestKillDescendants(t *testing.T) {
	r := NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	defer close(stop)
	cmd := exec.Command("/bin/sh", "-c", "setsid sleep 100 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for i := 0; i < 200 && child == 0; i++ {
		for _, s := range descendants(Procs(), p.Pid) {
			child = s.Pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("no child appeared")
	}
	if n := Kill(syscall.SIGKILL, Scope{Descendants: p.Pid}); n < 2 {
		t.Fatalf("signalled %d, want the shell and its child", n)
	}
	<-p.Done()
	for i := 0; ; i++ {
		if s, ok := ReadStat(child); !ok || !s.Alive() {
			break
		}
		if i == 500 {
			t.Fatalf("child %d still alive", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOOMCounterFindsOwnCgroup(t *testing.T) {
	// Whatever this machine has (v1, v2 or none), the counter reads or
	// says unknown; it never fails.
	c := NewOOMCounter()
	if n := c.Count(); c.File() != "" && n < 0 {
		t.Fatalf("found %s but cannot read oom_kill", c.File())
	}
	t.Logf("cgroup oom counter: %q", c.File())
}

// openPTY opens a terminal pair the plain way (ptmx, unlock, pts/N).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestSweepHangsUpTerminals: the graceful phase sends SIGHUP to a process
// on a terminal of its own, which ends one that ignores SIGTERM without
// the hard phase.
func TestSweepHangsUpTerminals(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	_, slave := openPTY(t)
	r := NewReaper(zerolog.Nop(), true)
	stop := make(chan struct{})
	go r.Run(stop)
	defer close(stop)
	cmd := exec.Command("/bin/sh", "-c", `trap "" TERM; trap "exit 0" HUP; while :; do sleep 0.05; done`)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	p, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if st, ok := ReadStat(p.Pid); ok && st.TTY != 0 && st.Session == p.Pid {
			break
		}
		if i == 500 {
			t.Fatal("the shell never got its terminal")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let it install its traps
	res := Sweep(r, time.Minute, false, zerolog.Nop())
	if res.HungUp < 1 || res.Killed != 0 || res.Left != 0 {
		t.Fatalf("sweep %+v: want the shell hung up, nothing SIGKILLed", res)
	}
	if e := p.Wait(); e.Code != 0 || e.Signal != 0 {
		t.Fatalf("shell ended by %v, want its HUP trap's exit 0", e)
	}
}
