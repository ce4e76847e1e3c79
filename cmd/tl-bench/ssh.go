package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/creack/pty"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("ssh", benchSSH) }

// sshCipher pins the cipher (ssh -c) of every client in the ssh area, on
// both targets: -ssh-cipher aes128-gcm@openssh.com measures what GCM-only
// servers got, against the client's own choice (chacha20-poly1305).
var sshCipher = flag.String("ssh-cipher", "", "ssh area: pass -c `cipher` to every ssh and sftp client (default: the client's choice)")

// sshTarget is one SSH server as OpenSSH's clients reach it.
type sshTarget struct {
	ssh  []string // ssh options before the destination (with -p)
	sftp []string // the same for sftp/scp (with -P)
	dest string
}

// benchSSH measures ours (OpenSSH clients -> tl-proxy -> uplink -> agent)
// and OpenSSH (the same clients -> Debian sshd on loopback) in one run:
// sftp get and put, `ssh -L` throughput, keystroke round trips under a
// PTY and connection set-up.
func benchSSH(e *Env) []Result {
	size := int64(1 << 30)
	keystrokes, connects := 1000, 20
	if e.Quick {
		size, keystrokes, connects = 128<<20, 200, 5
	}
	// The file to get must be readable inside the sandbox, which sees the
	// host's / (except /tmp) through its overlay: made before it starts.
	dir, err := os.MkdirTemp("/var/tmp", "tl-bench-ssh-")
	if err != nil {
		e.Fatalf("temp dir: %v", err)
	}
	e.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	big := filepath.Join(dir, "big.bin")
	if err := os.Rename(e.File("big.bin", size), big); err != nil {
		e.Fatalf("move: %v", err)
	}
	_ = os.Chmod(big, 0o644)

	key := integration.NewSSHKey(e, "bench")
	s := e.System(integration.Options{SSHKeys: integration.WriteAuthorizedKeys(e, key.Public)})
	benchSandboxReady(e, s)
	ours := sshTarget{ssh: s.SSHArgs(key.Private), sftp: append([]string{"-P", s.SSHPort()}, s.SSHOpts(key.Private)...), dest: s.SSHDest()}
	o := e.OpenSSH()
	oargs := o.ClientArgs()
	theirs := sshTarget{ssh: oargs, dest: o.Dest()}
	for i := 0; i < len(oargs); i++ { // the same options with -P for -p
		if oargs[i] == "-p" {
			theirs.sftp = append(theirs.sftp, "-P", oargs[i+1])
			i++
			continue
		}
		theirs.sftp = append(theirs.sftp, oargs[i])
	}

	if *sshCipher != "" {
		for _, t := range []*sshTarget{&ours, &theirs} {
			t.ssh = append([]string{"-c", *sshCipher}, t.ssh...)
			t.sftp = append([]string{"-c", *sshCipher}, t.sftp...)
		}
	}
	var rs []Result
	get := func(t sshTarget) float64 { return sftpRate(e, t, "get "+big+" /dev/null", size) }
	put := func(t sshTarget) float64 { return sftpRate(e, t, "put "+big+" /dev/null", size) }
	rs = append(rs,
		Result{Name: fmt.Sprintf("sftp get %d MiB", size>>20), Unit: "MB/s", Ours: get(ours), OpenSSH: get(theirs)},
		Result{Name: fmt.Sprintf("sftp put %d MiB", size>>20), Unit: "MB/s", Ours: put(ours), OpenSSH: put(theirs)},
	)
	raw := rawTCPThroughput(e, size)
	rs = append(rs, Result{Name: fmt.Sprintf("ssh -L download %d MiB", size>>20), Unit: "MB/s",
		Ours: forwardRate(e, ours, size), OpenSSH: forwardRate(e, theirs, size), Floor: raw})

	floor50, floor99 := keystrokeRTT(e, exec.Command("/bin/sh", "-c", "stty raw -echo; echo READY; cat"), keystrokes)
	o50, o99 := keystrokeRTT(e, sshCmd(theirs, "-tt", "stty raw -echo; echo READY; cat"), keystrokes)
	u50, u99 := keystrokeRTT(e, sshCmd(ours, "-tt", "stty raw -echo; echo READY; cat"), keystrokes)
	rs = append(rs,
		Result{Name: "keystroke round trip under a PTY, p50", Unit: "ms", Ours: u50, OpenSSH: o50, Floor: floor50, Lower: true, Note: "(floor: bare local PTY)"},
		Result{Name: "keystroke round trip under a PTY, p99", Unit: "ms", Ours: u99, OpenSSH: o99, Floor: floor99, Lower: true},
	)
	c50 := connectTime(e, ours, connects)
	oc50 := connectTime(e, theirs, connects)
	rs = append(rs, Result{Name: "connection set-up (ssh host true), p50", Unit: "ms", Ours: c50, OpenSSH: oc50, Lower: true})
	return rs
}

func sshCmd(t sshTarget, args ...string) *exec.Cmd {
	full := append(append(append([]string{}, t.ssh...), args[:len(args)-1]...), t.dest, args[len(args)-1])
	return exec.Command("ssh", full...)
}

// sftpRate runs one sftp batch command and returns size/time.
func sftpRate(e *Env, t sshTarget, batch string, size int64) float64 {
	cmd := exec.Command("sftp", append(append(append([]string{}, t.sftp...), "-b", "-"), t.dest)...)
	cmd.Stdin = strings.NewReader(batch + "\n")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		e.Fatalf("sftp %q: %v: %s", batch, err, out)
	}
	return MBps(size, time.Since(start))
}

// forwardRate downloads size bytes from a loopback server through
// `ssh -N -L`.
func forwardRate(e *Env, t sshTarget, size int64) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// The first byte read is the client's go-ahead: a probe
				// connection that only checks the forward sends none.
				var one [1]byte
				if _, err := c.Read(one[:]); err != nil {
					return
				}
				buf := make([]byte, 256<<10)
				for left := size; left > 0; {
					n := min(int64(len(buf)), left)
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
					left -= n
				}
			}()
		}
	}()
	lp := freeLocalPort(e)
	cmd := sshCmd(t, "-N", "-o", "ExitOnForwardFailure=yes", "-L", fmt.Sprintf("127.0.0.1:%d:%s", lp, ln.Addr()), "")
	cmd.Args = cmd.Args[:len(cmd.Args)-1] // no remote command
	if err := cmd.Start(); err != nil {
		e.Fatalf("ssh -L: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", lp)
	var c net.Conn
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err = net.Dial("tcp", addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.Fatalf("ssh -L not ready: %v", err)
		}
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		e.Fatalf("write: %v", err)
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size {
		e.Fatalf("-L download: %d of %d bytes: %v", n, size, err)
	}
	return MBps(size, time.Since(start))
}

func freeLocalPort(e *Env) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// keystrokeRTT runs cmd on a local PTY (so ssh puts it in raw mode, as a
// user's terminal), waits for READY, then times n one-byte round trips
// through the remote `cat` of a raw PTY: p50 and p99 in ms.
func keystrokeRTT(e *Env, cmd *exec.Cmd, n int) (float64, float64) {
	m, err := pty.Start(cmd)
	if err != nil {
		e.Fatalf("pty start: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); m.Close() }()
	var seen bytes.Buffer
	buf := make([]byte, 4096)
	deadline := time.Now().Add(20 * time.Second)
	for !bytes.Contains(seen.Bytes(), []byte("READY")) {
		if time.Now().After(deadline) {
			e.Fatalf("no READY from %v: %q", cmd.Args, seen.String())
		}
		k, err := m.Read(buf)
		if err != nil {
			e.Fatalf("pty read: %v (%q)", err, seen.String())
		}
		seen.Write(buf[:k])
	}
	time.Sleep(100 * time.Millisecond) // let the trailing newline arrive
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		c := byte('a' + i%26)
		start := time.Now()
		if _, err := m.Write([]byte{c}); err != nil {
			e.Fatalf("pty write: %v", err)
		}
		for {
			k, err := m.Read(buf)
			if err != nil {
				e.Fatalf("pty read: %v", err)
			}
			if bytes.IndexByte(buf[:k], c) >= 0 {
				break
			}
		}
		ds = append(ds, time.Since(start))
	}
	return Percentile(ds, 50), Percentile(ds, 99)
}

// connectTime times `ssh dest true`: key exchange, auth, one exec.
func connectTime(e *Env, t sshTarget, n int) float64 {
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if out, err := sshCmd(t, "true").CombinedOutput(); err != nil {
			e.Fatalf("ssh true: %v: %s", err, out)
		}
		ds = append(ds, time.Since(start))
	}
	return Percentile(ds, 50)
}
