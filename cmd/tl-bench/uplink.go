package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/integration"
	"github.com/tensorlake/tl-agent/uplink"
)

func init() { register("uplink", benchUplink) }

// benchUplink measures the uplink on its own (yamux over loopback TCP with
// the tuning both ends use, against raw TCP and other windows) and the full
// path through tl-proxy and the agent.
func benchUplink(e *Env) []Result {
	size := int64(1 << 30)
	if e.Quick {
		size = 256 << 20
	}
	var rs []Result
	raw := rawTCPThroughput(e, size)
	for _, w := range []uint32{256 << 10, uplink.StreamWindow, 16 << 20} {
		got := muxThroughput(e, size, w, true, true)
		name := fmt.Sprintf("one stream, window %d KiB", w>>10)
		note := ""
		if w == uplink.StreamWindow {
			note = "(the configured window)"
		}
		rs = append(rs, Result{Name: name, Unit: "MB/s", Ours: got, Floor: raw, Note: note})
	}
	plain := muxThroughput(e, size, uplink.StreamWindow, true, false)
	rs = append(rs, Result{Name: "one stream, without header coalescing", Unit: "MB/s", Ours: plain, Floor: raw, Note: "(for comparison)"})
	// A keystroke-sized round trip on one stream while another stream
	// carries a bulk transfer, with and without write chunking.
	idle50, idle99 := muxRTT(e, false, true)
	b50, b99 := muxRTT(e, true, true)
	u50, u99 := muxRTT(e, true, false)
	rs = append(rs,
		Result{Name: "1-byte RTT, idle link, p50", Unit: "ms", Ours: idle50, Lower: true},
		Result{Name: "1-byte RTT, idle link, p99", Unit: "ms", Ours: idle99, Lower: true},
		Result{Name: "1-byte RTT beside bulk, chunked, p50", Unit: "ms", Ours: b50, Floor: idle50, Lower: true},
		Result{Name: "1-byte RTT beside bulk, chunked, p99", Unit: "ms", Ours: b99, Floor: idle99, Lower: true},
		Result{Name: "1-byte RTT beside bulk, unchunked, p50", Unit: "ms", Ours: u50, Floor: idle50, Lower: true, Note: "(1 MiB writes, for comparison)"},
		Result{Name: "1-byte RTT beside bulk, unchunked, p99", Unit: "ms", Ours: u99, Floor: idle99, Lower: true},
	)
	const wan = 12.5e6 // 100 Mbit/s
	w50, w99 := muxRTTRate(e, false, true, wan)
	wc50, wc99 := muxRTTRate(e, true, true, wan)
	wu50, wu99 := muxRTTRate(e, true, false, wan)
	rs = append(rs,
		Result{Name: "100 Mbit/s link: 1-byte RTT idle, p50", Unit: "ms", Ours: w50, Lower: true},
		Result{Name: "100 Mbit/s link: RTT beside bulk, chunked, p50", Unit: "ms", Ours: wc50, Floor: w50, Lower: true},
		Result{Name: "100 Mbit/s link: RTT beside bulk, chunked, p99", Unit: "ms", Ours: wc99, Floor: w99, Lower: true},
		Result{Name: "100 Mbit/s link: RTT beside bulk, unchunked, p50", Unit: "ms", Ours: wu50, Floor: w50, Lower: true, Note: "(1 MiB writes)"},
		Result{Name: "100 Mbit/s link: RTT beside bulk, unchunked, p99", Unit: "ms", Ours: wu99, Floor: w99, Lower: true},
	)
	rs = append(rs, fullPath(e, size/4)...)
	return rs
}

// loopbackPair returns two ends of a loopback TCP connection.
func loopbackPair(e *Env) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		e.Fatalf("dial: %v", err)
	}
	b := <-ch
	a.(*net.TCPConn).SetNoDelay(true)
	b.(*net.TCPConn).SetNoDelay(true)
	return a, b
}

func rawTCPThroughput(e *Env, size int64) float64 {
	a, b := loopbackPair(e)
	defer a.Close()
	defer b.Close()
	return timeCopy(e, a, b, size)
}

// timeCopy writes size bytes into w in 32 KiB writes and times their
// arrival at r.
func timeCopy(e *Env, w io.WriteCloser, r io.Reader, size int64) float64 {
	buf := make([]byte, 32<<10)
	start := time.Now()
	go func() {
		for left := size; left > 0; left -= int64(len(buf)) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}()
	n, err := io.CopyN(io.Discard, r, size)
	if err != nil {
		e.Fatalf("copy after %d bytes: %v", n, err)
	}
	return MBps(size, time.Since(start))
}

func muxPair(e *Env, window uint32, coalesce bool) (*yamux.Session, *yamux.Session) {
	return muxPairRate(e, window, coalesce, 0)
}

// muxPairRate is muxPair over a link limited to rate bytes/s each way (0:
// unlimited), to see what a WAN-like link does to a keystroke queued
// behind bulk frames, which loopback hides.
func muxPairRate(e *Env, window uint32, coalesce bool, rate float64) (*yamux.Session, *yamux.Session) {
	a, b := loopbackPair(e)
	if rate > 0 {
		a, b = &slowConn{Conn: a, rate: rate}, &slowConn{Conn: b, rate: rate}
	}
	ca := uplink.MuxConfig(zerolog.Nop())
	ca.MaxStreamWindowSize = window
	cb := uplink.MuxConfig(zerolog.Nop())
	cb.MaxStreamWindowSize = window
	if coalesce {
		a, b = uplink.Coalesce(a), uplink.Coalesce(b)
	}
	client, err := yamux.Client(a, ca)
	if err != nil {
		e.Fatalf("yamux: %v", err)
	}
	server, err := yamux.Server(b, cb)
	if err != nil {
		e.Fatalf("yamux: %v", err)
	}
	return client, server
}

func muxThroughput(e *Env, size int64, window uint32, chunked, coalesce bool) float64 {
	client, server := muxPair(e, window, coalesce)
	defer client.Close()
	defer server.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, _ := server.Accept()
		accepted <- s
	}()
	st, err := client.Open()
	if err != nil {
		e.Fatalf("open: %v", err)
	}
	var w net.Conn = st
	if chunked {
		w = uplink.Wrap(st)
	}
	if _, err := w.Write([]byte{0}); err != nil { // make the stream known
		e.Fatalf("write: %v", err)
	}
	r := <-accepted
	io.ReadFull(r, make([]byte, 1))
	return timeCopy(e, w, r, size)
}

// muxRTT measures 1-byte echo round trips on one stream, optionally while
// another stream of the same session moves bulk data as fast as it can.
func muxRTT(e *Env, withBulk, chunked bool) (p50, p99 float64) {
	return muxRTTRate(e, withBulk, chunked, 0)
}

func muxRTTRate(e *Env, withBulk, chunked bool, rate float64) (p50, p99 float64) {
	client, server := muxPairRate(e, uplink.StreamWindow, true, rate)
	defer client.Close()
	defer server.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	defer func() { stop.Store(true); client.Close(); server.Close(); wg.Wait() }()
	go func() {
		for {
			s, err := server.Accept()
			if err != nil {
				return
			}
			go func() {
				var h [1]byte
				if _, err := io.ReadFull(s, h[:]); err != nil {
					return
				}
				if h[0] == 'e' { // echo stream
					io.Copy(s, s)
					return
				}
				io.Copy(io.Discard, s)
			}()
		}
	}()
	if withBulk {
		bulk, err := client.Open()
		if err != nil {
			e.Fatalf("open: %v", err)
		}
		var w net.Conn = bulk
		if chunked {
			w = uplink.Wrap(bulk)
		}
		w.Write([]byte{'b'})
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for !stop.Load() {
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		}()
		time.Sleep(200 * time.Millisecond) // let the bulk stream fill the link
	}
	echo, err := client.Open()
	if err != nil {
		e.Fatalf("open: %v", err)
	}
	ew := uplink.Wrap(echo)
	ew.Write([]byte{'e'})
	samples := 2000
	if e.Quick {
		samples = 500
	}
	if rate > 0 {
		samples = 200
	}
	var ds []time.Duration
	b := []byte{'x'}
	for i := 0; i < samples; i++ {
		start := time.Now()
		if _, err := ew.Write(b); err != nil {
			e.Fatalf("echo write: %v", err)
		}
		if _, err := io.ReadFull(echo, b); err != nil {
			e.Fatalf("echo read: %v", err)
		}
		ds = append(ds, time.Since(start))
	}
	return Percentile(ds, 50), Percentile(ds, 99)
}

// fullPath measures through tl-proxy, the uplink and the agent: a bulk
// HTTP download from a server inside the sandbox (the sandbox shares the
// host's network, so a loopback server here is inside for the agent)
// against the same download straight from loopback, and the round trip of
// GET /api/v1/health with and without that download running beside it.
func fullPath(e *Env, size int64) []Result {
	s := e.System(integration.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	chunk := make([]byte, 256<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for left := n; left > 0; left -= int64(len(chunk)) {
			if _, err := w.Write(chunk[:min(left, int64(len(chunk)))]); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	e.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	get := func(viaProxy bool, n int64) float64 {
		url := fmt.Sprintf("http://%s/?n=%d", ln.Addr(), n)
		req, _ := http.NewRequest("GET", url, nil)
		if viaProxy {
			req = s.PortRequest(context.Background(), "GET", port, fmt.Sprintf("/?n=%d", n), nil)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			e.Fatalf("download: %v", err)
		}
		defer resp.Body.Close()
		got, err := io.Copy(io.Discard, resp.Body)
		if err != nil || got != n {
			e.Fatalf("download: %d of %d bytes: %v", got, n, err)
		}
		return MBps(n, time.Since(start))
	}
	direct := get(false, size)
	proxied := get(true, size)
	health := func() []time.Duration {
		var ds []time.Duration
		client := &http.Client{}
		for i := 0; i < 500; i++ {
			req := s.Request(context.Background(), "GET", "/api/v1/health", nil)
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				e.Fatalf("health: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ds = append(ds, time.Since(start))
		}
		return ds
	}
	idle := health()
	done := make(chan struct{})
	go func() {
		defer close(done)
		get(true, size)
	}()
	time.Sleep(100 * time.Millisecond)
	busy := health()
	<-done
	return []Result{
		{Name: "HTTP download via proxy+uplink+agent", Unit: "MB/s", Ours: proxied, Floor: direct, Note: "(floor: same download on loopback)"},
		{Name: "GET /health RTT via proxy, idle, p50", Unit: "ms", Ours: Percentile(idle, 50), Lower: true},
		{Name: "GET /health RTT via proxy, idle, p99", Unit: "ms", Ours: Percentile(idle, 99), Lower: true},
		{Name: "GET /health RTT beside a download, p50", Unit: "ms", Ours: Percentile(busy, 50), Floor: Percentile(idle, 50), Lower: true},
		{Name: "GET /health RTT beside a download, p99", Unit: "ms", Ours: Percentile(busy, 99), Floor: Percentile(idle, 99), Lower: true},
	}
}

// slowConn paces writes to rate bytes/s, like a link of that speed.
type slowConn struct {
	net.Conn
	rate float64
	mu   sync.Mutex
	next time.Time
}

func (c *slowConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	now := time.Now()
	if c.next.Before(now) {
		c.next = now
	}
	c.next = c.next.Add(time.Duration(float64(len(p)) / c.rate * float64(time.Second)))
	wait := time.Until(c.next)
	c.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
	return c.Conn.Write(p)
}
