package uplink

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

func TestHandshakeRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteHelloV1(&buf, Hello{SandboxID: "sbx", Token: "secret", AgentVersion: "v1"}); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHello(&buf)
	if err != nil || h.SandboxID != "sbx" || h.Token != "secret" || h.Version != VersionLegacy {
		t.Fatalf("got %+v, %v", h, err)
	}
	buf.Reset()
	_ = WriteWelcome(&buf, Welcome{Code: CodeBadToken, Error: "wrong token"})
	var ref *RefusedError
	if err := ReadWelcome(&buf); !errors.As(err, &ref) || ref.Code != CodeBadToken {
		t.Fatalf("refusal: %v", err)
	}
	buf.Reset()
	_ = WriteWelcome(&buf, Welcome{OK: true})
	if err := ReadWelcome(&buf); err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"GET / HTTP/1.1\r\n\r\n",
		"TLUP\x01\x00\x00",
		"TLUP\x01\xff\xff",
		"TLUP\x01\x00\x02{}",
		"TLUP\x01\x00\x05{\"sa",
		"TL",
	} {
		if _, err := ReadHello(strings.NewReader(in)); err == nil {
			t.Errorf("ReadHello(%q) accepted", in)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, s := range []string{"api", "ssh", "tcp:8080", "unix:/run/x.sock"} {
		h, err := ParseTarget(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		var buf bytes.Buffer
		if err := WriteHeader(&buf, h); err != nil {
			t.Fatal(err)
		}
		got, err := ReadHeader(&buf)
		if err != nil || got != h || got.String() != s {
			t.Fatalf("%s: got %+v %v", s, got, err)
		}
	}
}

// TestHeaderRequestIDCompatible: a header with the optional request ids
// round-trips, and an agent that predates them (its Header had no such
// fields) still reads it: unknown fields are skipped.
func TestHeaderRequestIDCompatible(t *testing.T) {
	h := Header{Kind: KindSSH, User: "u", RequestID: "4bf92f3577b34da6a3ce929d0e0e4736", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}
	var buf bytes.Buffer
	if err := WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), buf.Bytes()...)
	got, err := ReadHeader(&buf)
	if err != nil || got != h || got.Validate() != nil {
		t.Fatalf("got %+v %v", got, err)
	}
	var old struct {
		Kind   string `json:"kind"`
		Port   int    `json:"port,omitempty"`
		Path   string `json:"path,omitempty"`
		User   string `json:"user,omitempty"`
		Remote string `json:"remote,omitempty"`
	}
	if err := json.Unmarshal(raw[2:], &old); err != nil || old.Kind != KindSSH || old.User != "u" {
		t.Fatalf("an older agent's decoding: %+v %v", old, err)
	}
}

func TestHeaderValidate(t *testing.T) {
	bad := []Header{{}, {Kind: "x"}, {Kind: KindTCP}, {Kind: KindTCP, Port: 70000}, {Kind: KindUnix, Path: "rel"},
		{Kind: KindUnix, Path: "/" + strings.Repeat("a", 200)}, {Kind: KindUnix, Path: "/a\x00b"},
		{Kind: KindSSH, RequestID: strings.Repeat("r", 129)}, {Kind: KindSSH, RequestID: "a b"},
		{Kind: KindSSH, TraceID: strings.Repeat("0", 32)}, {Kind: KindSSH, TraceID: "XYZ"}}
	for _, h := range bad {
		if h.Validate() == nil {
			t.Errorf("%+v validated", h)
		}
	}
}

func TestReply(t *testing.T) {
	var buf bytes.Buffer
	_ = WriteReply(&buf, StatusUnreachable, "port 1: refused")
	var re *ReplyError
	if err := ReadReply(&buf); !errors.As(err, &re) || re.Status != StatusUnreachable || re.Msg != "port 1: refused" {
		t.Fatalf("got %v", err)
	}
	_ = WriteReply(&buf, StatusOK, "")
	if err := ReadReply(&buf); err != nil {
		t.Fatal(err)
	}
}

// TestStreamChunksWrites: a big write goes out in frames of at most
// MaxWriteChunk, so a bulk stream cannot hold the sender for long.
func TestStreamChunksWrites(t *testing.T) {
	max := streamFrames(t, &frameRecorder{}, 8<<20)
	if max > MaxWriteChunk+12 {
		t.Fatalf("largest frame write %d > max chunk %d", max, MaxWriteChunk)
	}
}

// TestStreamFramesStaySmallOnSlowLink: on a link that moves 1 MB/s, a
// 32 KiB frame takes 32 ms, far over FrameTime, so the frames never grow
// past WriteChunk (a slower machine only makes the frames take longer).
func TestStreamFramesStaySmallOnSlowLink(t *testing.T) {
	max := streamFrames(t, &frameRecorder{rate: 1e6}, 1<<20)
	if max > WriteChunk+12 {
		t.Fatalf("largest frame write %d > chunk %d on a slow link", max, WriteChunk)
	}
}

// TestStreamFramesSmallBesideInteractive: while another stream of the
// session makes small writes (keystrokes), a bulk stream's frames stay at
// WriteChunk even on a fast link.
func TestStreamFramesSmallBesideInteractive(t *testing.T) {
	a, b := net.Pipe()
	rec := &frameRecorder{Conn: a}
	client, err := yamux.Client(rec, MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, _ := yamux.Server(b, MuxConfig(zerolog.Nop()))
	defer server.Close()
	go func() {
		for {
			s, err := server.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, s)
		}
	}()
	keys, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	kw := Wrap(keys)
	stop := make(chan struct{})
	typed := make(chan struct{})
	go func() {
		defer close(typed)
		for i := 0; ; i++ {
			if _, err := kw.Write([]byte{'x'}); err != nil {
				return
			}
			if i == 0 {
				typed <- struct{}{}
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	<-typed
	bulk, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Wrap(bulk).Write(make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-typed
	if max := rec.maxWrite(); max > WriteChunk+12 {
		t.Fatalf("largest frame write %d > chunk %d beside keystrokes", max, WriteChunk)
	}
}

// streamFrames writes size bytes through a wrapped stream over rec and
// returns the largest write the session made.
func streamFrames(t *testing.T, rec *frameRecorder, size int) int {
	a, b := net.Pipe()
	rec.Conn = a
	client, err := yamux.Client(rec, MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, _ := yamux.Server(b, MuxConfig(zerolog.Nop()))
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err := server.Accept()
		if err == nil {
			io.CopyN(io.Discard, s, int64(size))
		}
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	w := Wrap(st)
	if _, err := w.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	<-done
	return rec.maxWrite()
}

type frameRecorder struct {
	net.Conn
	max  atomic.Int64
	rate float64 // bytes/s; 0: no pacing
}

func (f *frameRecorder) Write(p []byte) (int, error) {
	if int64(len(p)) > f.max.Load() {
		f.max.Store(int64(len(p)))
	}
	if f.rate > 0 {
		time.Sleep(time.Duration(float64(len(p)) / f.rate * float64(time.Second)))
	}
	return f.Conn.Write(p)
}

func (f *frameRecorder) maxWrite() int { return int(f.max.Load()) }

func FuzzReadHeader(f *testing.F) {
	for _, s := range []string{"api", "tcp:22", "unix:/x"} {
		h, _ := ParseTarget(s)
		var buf bytes.Buffer
		_ = WriteHeader(&buf, h)
		f.Add(buf.Bytes())
	}
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, '{'})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		if h.Validate() == nil {
			var buf bytes.Buffer
			if err := WriteHeader(&buf, h); err != nil {
				t.Fatalf("valid header %+v does not encode: %v", h, err)
			}
		}
		_ = h.String()
	})
}

func FuzzReadHello(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteHelloV1(&buf, Hello{SandboxID: "s", Token: "t"})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = writeFrame(&buf, Hello{Version: Version, SandboxID: "s", Nonce: strings.Repeat("ab", NonceSize), Key: KeyLink, KeyID: "0011223344556677"})
	f.Add(buf.Bytes())
	f.Add([]byte("TLUP\x01\x00\x02{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHello(bytes.NewReader(data))
		if err == nil && (h.SandboxID == "" || len(h.SandboxID) > 128) {
			t.Fatalf("accepted bad sandbox id %q", h.SandboxID)
		}
		_ = ReadWelcome(bytes.NewReader(data))
	})
}

// TestCoalesceJoinsHeaderAndBody checks that a data frame's header leaves in
// the same write as its body, and that other frames pass straight through.
func TestCoalesceJoinsHeaderAndBody(t *testing.T) {
	rec := &writeLog{}
	c := Coalesce(rec)
	data := []byte{0, yamuxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3}
	if n, err := c.Write(data); n != 12 || err != nil {
		t.Fatalf("header write = %d, %v", n, err)
	}
	if len(rec.writes) != 0 {
		t.Fatal("data header was not held")
	}
	if n, err := c.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("body write = %d, %v", n, err)
	}
	if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], append(append([]byte{}, data...), "abc"...)) {
		t.Fatalf("writes = %q", rec.writes)
	}
	window := []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0} // window update: no body
	c.Write(window)
	if len(rec.writes) != 2 || !bytes.Equal(rec.writes[1], window) {
		t.Fatalf("window update held or changed: %q", rec.writes)
	}
}

type writeLog struct {
	net.Conn
	writes [][]byte
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

func FuzzReadReply(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteReply(&buf, StatusUnreachable, "port 1: refused")
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ReadReply(bytes.NewReader(data))
		var re *ReplyError
		if errors.As(err, &re) && re.Status == StatusOK {
			t.Fatal("OK status reported as an error")
		}
	})
}
