package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// readFromConn records whether writes to it came through ReadFrom (one
// big copy, as uplink.Stream does it) or as io.Copy's 32 KiB writes.
type readFromConn struct {
	net.Conn
	viaReadFrom atomic.Int64 // bytes
	maxWrite    atomic.Int64
}

func (c *readFromConn) Write(b []byte) (int, error) {
	if int64(len(b)) > c.maxWrite.Load() {
		c.maxWrite.Store(int64(len(b)))
	}
	return c.Conn.Write(b)
}

func (c *readFromConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.CopyBuffer(struct{ io.Writer }{c.Conn}, struct{ io.Reader }{r}, make([]byte, 256<<10))
	c.viaReadFrom.Add(n)
	return n, err
}

// TestUploadReachesStreamReadFrom: the transport's request-body copy goes
// through relayCounter to the stream's ReadFrom (256 KiB steps and
// frames), not in io.Copy's 32 KiB writes; the bytes are still counted.
func TestUploadReachesStreamReadFrom(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	to := prometheus.NewCounter(prometheus.CounterOpts{Name: "to"})
	from := prometheus.NewCounter(prometheus.CounterOpts{Name: "from"})
	var inner *readFromConn
	tr := &http.Transport{DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		inner = &readFromConn{Conn: c}
		return &relayCounter{Conn: inner, to: to, from: from}, nil
	}}
	defer tr.CloseIdleConnections()
	const size = 4 << 20
	req, _ := http.NewRequest("PUT", srv.URL, bytes.NewReader(make([]byte, size)))
	req.Body = io.NopCloser(req.Body) // no WriterTo shortcut: as the proxy's server-side body
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The first bytes share the transport's 4 KiB buffer with the headers.
	if got := inner.viaReadFrom.Load(); got < size-4096 {
		t.Errorf("%d of %d body bytes went through the stream's ReadFrom (largest plain write %d)", got, size, inner.maxWrite.Load())
	}
	var m dto.Metric
	if err := to.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got < size {
		t.Errorf("counted %v bytes to the sandbox, want >= %d", got, size)
	}
}

// shrinkConn counts Shrink calls (yamux's: frees an empty receive buffer).
type shrinkConn struct {
	net.Conn
	shrunk atomic.Int32
}

func (c *shrinkConn) Shrink() { c.shrunk.Add(1) }

// TestIdleStreamShrunk: once a request's answer is relayed, the stream
// it used (pooled by the transport, behind relayCounter) is shrunk.
func TestIdleStreamShrunk(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, 1<<20))
	}))
	defer srv.Close()
	var inner *shrinkConn
	tr := &http.Transport{DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		inner = &shrinkConn{Conn: c}
		return &relayCounter{Conn: inner, to: prometheus.NewCounter(prometheus.CounterOpts{Name: "t"}), from: prometheus.NewCounter(prometheus.CounterOpts{Name: "f"})}, nil
	}}
	defer tr.CloseIdleConnections()
	for i := 1; i <= 2; i++ {
		var s idleShrinker
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), s.trace()), "GET", srv.URL, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		s.shrink()
		if got := inner.shrunk.Load(); got != int32(i) {
			t.Fatalf("request %d: the stream was shrunk %d times, want %d", i, got, i)
		}
	}
}
