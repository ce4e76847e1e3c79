package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/files"
	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("files", benchFiles) }

// fileTarget is where the Files API is served: the agent through tl-proxy
// and the uplink, or the same files.Server in this process on loopback.
type fileTarget struct {
	req  func(method, path string, body io.Reader) *http.Request
	path string // the path= value
}

// benchFiles measures upload and download through the Files API
// (PUT/GET /api/v1/files via tl-proxy) against the same handlers served
// directly (files.Server in this process on loopback: the agent's own
// cost without proxy and uplink, the figure the target is a ratio of) and
// OpenSSH's sftp, in the same run, rounds interleaved (best of each). All
// write to a tmpfs (the sandbox's overlay lives on one; sftp and the
// direct server write under /dev/shm), from the same source file, so the
// disk is out of the comparison. A local cp is printed for scale.
func benchFiles(e *Env) []Result {
	size := int64(1 << 30)
	if e.Quick {
		size = 256 << 20
	}
	srcPath := e.File("files-src.bin", size)
	shm, err := os.MkdirTemp("/dev/shm", "tl-bench-")
	if err != nil {
		e.Fatalf("tmpfs dir: %v", err)
	}
	e.Cleanup(func() { os.RemoveAll(shm) })

	// The best of two local copies: the first may still read from disk.
	floorUp := max(timed(size, func() { e.Run("cp", srcPath, filepath.Join(shm, "floor.bin")) }),
		timed(size, func() { e.Run("cp", srcPath, filepath.Join(shm, "floor.bin")) }))
	floorDown := timed(size, func() { e.Run("cp", filepath.Join(shm, "floor.bin"), "/dev/null") })
	os.Remove(filepath.Join(shm, "floor.bin"))

	o := e.OpenSSH()
	remote := filepath.Join(shm, "sftp.bin")
	sftp := func(cmd string) {
		c := exec.Command("sftp", append(sftpArgs(o), "-b", "-", o.Dest())...)
		c.Stdin = strings.NewReader(cmd + "\n")
		if out, err := c.CombinedOutput(); err != nil {
			e.Fatalf("sftp %s: %v: %s", cmd, err, out)
		}
	}
	sftpUp := timed(size, func() { sftp("put " + srcPath + " " + remote) })
	sftpDown := timed(size, func() { sftp("get " + remote + " /dev/null") })
	os.Remove(remote)

	var opts integration.Options
	prof := os.Getenv("TL_BENCH_PROFILE") // a folder for CPU profiles of proxy and agent
	if prof != "" {
		opts.ProxyArgs = []string{"--cpu-profile", filepath.Join(prof, "proxy.pprof"), "--cpu-profile-for", "12s"}
	}
	s := e.System(opts)
	proxy := fileTarget{path: "/tmp/bench.bin", req: func(m, p string, b io.Reader) *http.Request {
		return s.Request(context.Background(), m, p, b)
	}}
	// TL_BENCH_AB=DIR: also the proxy path of another build (tl-agent and
	// tl-proxy in DIR), in the same interleaved rounds: A/B on a shared
	// machine is only fair within one run.
	var other *fileTarget
	if dir := os.Getenv("TL_BENCH_AB"); dir != "" {
		s2 := e.System(integration.Options{BinDir: dir})
		other = &fileTarget{path: "/tmp/bench.bin", req: func(m, p string, b io.Reader) *http.Request {
			return s2.Request(context.Background(), m, p, b)
		}}
	}
	direct, port := directFiles(e, filepath.Join(shm, "direct.bin"))
	// The topology's floor: the same direct server behind one plain relay
	// process (the bench binary re-executed, as in the hops area, copying
	// in 256 KiB steps like the proxy): what one more process hop costs by
	// itself on this machine.
	relayed := loopbackFiles(e, startRelay(e, port, relayBigEnv+"=1"), direct.path)
	idleRSS, idleProxy := rssMiB(e, s.AgentPid()), rssMiB(e, s.ProxyPid())
	var peak, peakProxy atomic.Int64 // RSS during the transfers, KiB
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	pid, proxyPid := s.AgentPid(), s.ProxyPid()
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, w := range []struct {
				pid  int
				peak *atomic.Int64
			}{{pid, &peak}, {proxyPid, &peakProxy}} {
				if v := int64(rssKiB(w.pid)); v > w.peak.Load() {
					w.peak.Store(v)
				}
			}
		}
	}()
	stopWatching := sync.OnceFunc(func() { close(stopWatch); <-watched })
	defer stopWatching()
	var up, down, dUp, dDown, rUp, rDown, bUp, bDown float64
	// TL_BENCH_ROUNDS: more rounds, e.g. to profile the processes.
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("TL_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	if dir := os.Getenv("TL_BENCH_FILES"); dir != "" { // profiling: one direction via the proxy only
		fileUpload(e, proxy, srcPath, size)
		if prof != "" {
			go agentProfile(s, filepath.Join(prof, "agent.pprof"), 10)
		}
		for round := 0; round < rounds; round++ {
			if dir == "up" {
				e.Logf("upload via proxy %.0f MB/s", fileUpload(e, proxy, srcPath, size))
			} else {
				e.Logf("download via proxy %.0f MB/s", fileDownload(e, proxy, size))
			}
		}
		return nil
	}
	// The machine's CPU per GB moved, per path: on a shared 2-core VM the
	// throughput swings with the load, the work each path costs far less.
	var cpu cpuPerGB
	for round := 0; round < rounds; round++ {
		up = max(up, cpu.add("up proxy", size, func() float64 { return fileUpload(e, proxy, srcPath, size) }))
		dUp = max(dUp, cpu.add("up direct", size, func() float64 { return fileUpload(e, direct, srcPath, size) }))
		rUp = max(rUp, cpu.add("up relay", size, func() float64 { return fileUpload(e, relayed, srcPath, size) }))
		down = max(down, cpu.add("down proxy", size, func() float64 { return fileDownload(e, proxy, size) }))
		dDown = max(dDown, cpu.add("down direct", size, func() float64 { return fileDownload(e, direct, size) }))
		rDown = max(rDown, cpu.add("down relay", size, func() float64 { return fileDownload(e, relayed, size) }))
		if other != nil {
			bUp = max(bUp, cpu.add("up ab", size, func() float64 { return fileUpload(e, *other, srcPath, size) }))
			bDown = max(bDown, cpu.add("down ab", size, func() float64 { return fileDownload(e, *other, size) }))
		}
	}
	stopWatching()
	last := time.Now()
	time.Sleep(time.Until(last.Add(10 * time.Second)))
	after, afterProxy := rssMiB(e, s.AgentPid()), rssMiB(e, s.ProxyPid())
	var ab []Result
	if other != nil {
		ab = []Result{
			{Name: "  TL_BENCH_AB build: upload via proxy", Unit: "MB/s", Ours: bUp, Floor: dUp, Note: "(floor: direct)"},
			{Name: "  TL_BENCH_AB build: download via proxy", Unit: "MB/s", Ours: bDown, Floor: dDown},
			{Name: "  TL_BENCH_AB build: machine CPU per GB, upload", Unit: "ms", Ours: cpu.ms("up ab"), Floor: cpu.ms("up direct"), Lower: true},
			{Name: "  TL_BENCH_AB build: machine CPU per GB, download", Unit: "ms", Ours: cpu.ms("down ab"), Floor: cpu.ms("down direct"), Lower: true},
		}
	}
	return append([]Result{
		{Name: "file upload via proxy, " + sizeName(size), Unit: "MB/s", Ours: up, OpenSSH: sftpUp, Floor: dUp, Note: "(ssh: sftp put; floor: the same handlers direct; target >= 0.8x)"},
		{Name: "file download via proxy, " + sizeName(size), Unit: "MB/s", Ours: down, OpenSSH: sftpDown, Floor: dDown, Note: "(ssh: sftp get; floor: the same handlers direct)"},
		{Name: "  direct through one relay process, upload", Unit: "MB/s", Ours: rUp, Floor: dUp, Note: "(floor: direct; what one process hop costs)"},
		{Name: "  direct through one relay process, download", Unit: "MB/s", Ours: rDown, Floor: dDown},
		{Name: "  upload via proxy vs the one-relay floor", Unit: "MB/s", Ours: up, Floor: rUp},
		{Name: "  download via proxy vs the one-relay floor", Unit: "MB/s", Ours: down, Floor: rDown},
		{Name: "  files.Server direct, upload", Unit: "MB/s", Ours: dUp, Floor: floorUp, Note: "(floor: cp to tmpfs)"},
		{Name: "  files.Server direct, download", Unit: "MB/s", Ours: dDown, Floor: floorDown, Note: "(floor: cp to /dev/null)"},
		{Name: "machine CPU per GB, upload via proxy", Unit: "ms", Ours: cpu.ms("up proxy"), Floor: cpu.ms("up direct"), Lower: true, Note: "(all processes; floor: direct)"},
		{Name: "machine CPU per GB, upload through one relay", Unit: "ms", Ours: cpu.ms("up relay"), Floor: cpu.ms("up direct"), Lower: true},
		{Name: "machine CPU per GB, download via proxy", Unit: "ms", Ours: cpu.ms("down proxy"), Floor: cpu.ms("down direct"), Lower: true},
		{Name: "machine CPU per GB, download through one relay", Unit: "ms", Ours: cpu.ms("down relay"), Floor: cpu.ms("down direct"), Lower: true},
		{Name: "agent RSS before the transfers", Unit: "MiB", Ours: idleRSS, Lower: true},
		{Name: "agent RSS, peak during the transfers", Unit: "MiB", Ours: float64(peak.Load()) / 1024, Floor: idleRSS, Lower: true, Note: "(sampled every 50 ms)"},
		{Name: "agent RSS 10 s after the last transfer", Unit: "MiB", Ours: after, Floor: idleRSS, Lower: true, Note: "(target < 2x before)"},
		{Name: "proxy RSS before the transfers", Unit: "MiB", Ours: idleProxy, Lower: true},
		{Name: "proxy RSS, peak during the transfers", Unit: "MiB", Ours: float64(peakProxy.Load()) / 1024, Floor: idleProxy, Lower: true},
		{Name: "proxy RSS 10 s after the last transfer", Unit: "MiB", Ours: afterProxy, Floor: idleProxy, Lower: true},
	}, ab...)
}

// directFiles serves a files.Server (root's files) on loopback in this
// process: the agent's handlers without tl-proxy and the uplink. It
// returns the target and its port.
func directFiles(e *Env, path string) (fileTarget, int) {
	owner := &identity.User{Name: "root", Home: "/root", Shell: "/bin/sh"}
	mux := http.NewServeMux()
	fs, err := files.New(files.Config{Owner: owner}, zerolog.Nop())
	if err != nil {
		e.Fatalf("files: %v", err)
	}
	fs.Routes(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	e.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	return loopbackFiles(e, port, path), port
}

// loopbackFiles is the Files API at 127.0.0.1:port, writing path.
func loopbackFiles(e *Env, port int, path string) fileTarget {
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	return fileTarget{path: path, req: func(m, p string, b io.Reader) *http.Request {
		req, err := http.NewRequest(m, base+p, b)
		if err != nil {
			e.Fatalf("request: %v", err)
		}
		return req
	}}
}

// rssKiB is pid's VmRSS, 0 when it cannot be read (the watcher's reads
// must not fail the run from another goroutine).
func rssKiB(pid int) float64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb
		}
	}
	return 0
}

// agentProfile saves a CPU profile of the agent, taken through its
// control socket.
func agentProfile(s *integration.System, path string, seconds int) {
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.ControlSocket())
	}}}
	resp, err := c.Get(fmt.Sprintf("http://agent/debug/pprof/profile?seconds=%d", seconds))
	if err != nil {
		fmt.Println("agent profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err == nil {
		_, err = io.Copy(f, resp.Body)
		f.Close()
	}
	if err != nil {
		fmt.Println("agent profile:", err)
	}
}

func fileUpload(e *Env, t fileTarget, src string, size int64) float64 {
	return timed(size, func() {
		f, err := os.Open(src)
		if err != nil {
			e.Fatalf("open: %v", err)
		}
		defer f.Close()
		req := t.req("PUT", "/api/v1/files?path="+url.QueryEscape(t.path), f)
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 204 {
			e.Fatalf("PUT: %v %v", resp, err)
		}
		resp.Body.Close()
	})
}

func fileDownload(e *Env, t fileTarget, size int64) float64 {
	return timed(size, func() {
		resp, err := http.DefaultClient.Do(t.req("GET", "/api/v1/files?path="+url.QueryEscape(t.path), nil))
		if err != nil || resp.StatusCode != 200 {
			e.Fatalf("GET: %v %v", resp, err)
		}
		defer resp.Body.Close()
		if n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10)); err != nil || n != size {
			e.Fatalf("GET: %d of %d bytes: %v", n, size, err)
		}
	})
}

// sftpArgs turns ssh's client options into sftp's (-P for the port).
func sftpArgs(o *integration.OpenSSH) []string {
	args := o.ClientArgs()
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		if args[i] == "-p" && i+1 < len(args) {
			out = append(out, "-P", args[i+1])
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// cpuPerGB sums the machine's busy CPU time (/proc/stat: every process,
// the kernel's softirqs included) over each path's transfers.
type cpuPerGB struct {
	busy  map[string]time.Duration
	bytes map[string]int64
}

func (c *cpuPerGB) add(path string, size int64, f func() float64) float64 {
	if c.busy == nil {
		c.busy, c.bytes = map[string]time.Duration{}, map[string]int64{}
	}
	before := machineBusy()
	v := f()
	c.busy[path] += machineBusy() - before
	c.bytes[path] += size
	return v
}

// ms is the path's busy CPU per GB (1e9 bytes) in milliseconds.
func (c *cpuPerGB) ms(path string) float64 {
	if c.bytes[path] == 0 {
		return 0
	}
	return float64(c.busy[path].Milliseconds()) * 1e9 / float64(c.bytes[path])
}

// machineBusy is the CPU time all CPUs spent on anything but idle and
// iowait since boot (the "cpu" line of /proc/stat, in USER_HZ ticks).
func machineBusy() time.Duration {
	data, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is in user already
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func timed(size int64, f func()) float64 {
	start := time.Now()
	f()
	return MBps(size, time.Since(start))
}
