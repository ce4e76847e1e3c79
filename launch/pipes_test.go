package launch

import (
	"io"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// NewPipes: stdin and stdout are PipeSize (bulk transfers run ahead), and
// a command attached to them reads its input and writes both outputs to
// the caller's ends, whose EOF comes once the child's ends are closed.
func TestPipes(t *testing.T) {
	p, err := NewPipes()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for name, f := range map[string]interface{ Fd() uintptr }{"stdin": p.InW, "stdout": p.OutW} {
		n, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0)
		if err != nil || n < PipeSize {
			t.Errorf("%s pipe is %d bytes (%v): want at least PipeSize %d", name, n, err, PipeSize)
		}
	}
	cmd := exec.Command("sh", "-c", "read x; echo out $x; echo err >&2")
	p.Attach(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.CloseChild()
	if _, err := io.WriteString(p.InW, "hi\n"); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(p.OutR)
	errOut, _ := io.ReadAll(p.ErrR)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if string(out) != "out hi\n" || string(errOut) != "err\n" {
		t.Fatalf("stdout %q, stderr %q: want the command's own output on each", out, errOut)
	}
}
