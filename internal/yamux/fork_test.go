package yamux

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawPeer is the far end of a server session, writing frames by hand.
func rawPeer(t *testing.T) (*Session, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	conf := testConfNoKeepAlive()
	srv, err := Server(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); b.Close() })
	go io.Copy(io.Discard, b) // the server's window updates and acks
	return srv, b
}

func writeFrame(t *testing.T, c net.Conn, typ uint8, flags uint16, id uint32, body []byte, length uint32) {
	t.Helper()
	h := header(make([]byte, headerSize))
	h.encode(typ, flags, id, length)
	if _, err := c.Write(append(h, body...)); err != nil {
		t.Fatal(err)
	}
}

// A reader takes the bytes already received while the next large frame
// is still arriving (upstream held the stream's lock for the whole
// frame's read, so this Read waited for the rest of the frame).
func TestForkReadWhileLargeFrameArrives(t *testing.T) {
	srv, peer := rawPeer(t)
	writeFrame(t, peer, typeWindowUpdate, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	writeFrame(t, peer, typeData, 0, 1, []byte("first"), 5)
	writeFrame(t, peer, typeData, 0, 1, make([]byte, 1024), 64<<10) // 63 KiB still to come
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 5)
		n, _ := io.ReadFull(st, buf)
		got <- string(buf[:n])
	}()
	select {
	case s := <-got:
		if s != "first" {
			t.Fatalf("read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read of queued bytes waited for the next frame to arrive")
	}
}

// Frames of every size, read in slices of every size, come out whole and
// in order, and a drained stream holds no chunk.
func TestForkQueueKeepsOrder(t *testing.T) {
	client, server := testClientServer(t)
	defer client.Close()
	defer server.Close()
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, 8<<20)
	rng.Read(data)
	go func() {
		st, err := client.Open()
		if err != nil {
			return
		}
		for rest := data; len(rest) > 0; {
			n := []int{1, 7, 4096, 32<<10 - 1, 32 << 10, 100 << 10, 256 << 10}[rng.Intn(7)]
			if n > len(rest) {
				n = len(rest)
			}
			if _, err := st.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
		st.Close()
	}()
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sizes := []int{1, 3, 4096, 64 << 10, 300 << 10}
	for i := 0; ; i++ {
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := st.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("read %d bytes, not the %d written in order", out.Len(), len(data))
	}
	st.recvLock.Lock()
	defer st.recvLock.Unlock()
	if st.recvBuf.Len() != 0 || len(st.recvBuf.chunks) != 0 {
		t.Fatalf("a drained stream holds %d chunks", len(st.recvBuf.chunks))
	}
}

// A window of 1-byte frames is packed into a few chunks, not one each.
func TestForkSmallFramesPacked(t *testing.T) {
	srv, peer := rawPeer(t)
	writeFrame(t, peer, typeWindowUpdate, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	const frames = 100000
	for i := 0; i < frames; i++ {
		writeFrame(t, peer, typeData, 0, 1, []byte{byte(i)}, 1)
	}
	writeFrame(t, peer, typeData, flagFIN, 1, nil, 0)
	if c := queuedRoom(t, st, frames); c > frames+minChunk {
		t.Fatalf("%d 1-byte frames hold %d bytes of chunks", frames, c)
	}
}

// queuedRoom waits until n bytes are queued on st and returns the chunk
// room that holds them.
func queuedRoom(t *testing.T, st *Stream, n int) int {
	t.Helper()
	for i := 0; i < 100; i++ {
		st.recvLock.Lock()
		l, c := st.recvBuf.Len(), st.recvBuf.Cap()
		st.recvLock.Unlock()
		if l == n {
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%d bytes did not arrive", n)
	return 0
}

// TestForkWriteTimeoutMidBody: a data frame written from the caller's
// goroutine that is stuck on the connection (the peer reads nothing) past
// ConnectionWriteTimeout returns ErrConnectionWriteTimeout and ends the
// session (the frame may be half written).
func TestForkWriteTimeoutMidBody(t *testing.T) {
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 200 * time.Millisecond
	a, b := testConnTCP(t) // b never reads
	_ = a.(*net.TCPConn).SetWriteBuffer(4 << 10)
	_ = b.(*net.TCPConn).SetReadBuffer(4 << 10)
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, initialStreamWindow))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrConnectionWriteTimeout) {
			t.Fatalf("write: %v, want ErrConnectionWriteTimeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write stuck past its timeout")
	}
	if !client.IsClosed() {
		t.Fatal("session still open after a write timed out mid-frame")
	}
}

// A peer that fills the window with frames just over a size class holds
// the stream to at most twice the window in chunk room.
func TestForkQueueRoomBounded(t *testing.T) {
	srv, peer := rawPeer(t)
	writeFrame(t, peer, typeWindowUpdate, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	const size = minChunk + 1
	frames := int(initialStreamWindow) / size
	body := make([]byte, size)
	for i := 0; i < frames; i++ {
		writeFrame(t, peer, typeData, 0, 1, body, size)
	}
	if c := queuedRoom(t, st, frames*size); c > 2*int(initialStreamWindow) {
		t.Fatalf("a window of %d-byte frames holds %d bytes of chunks", size, c)
	}
}

// tcpSessions is a client and a server session over loopback TCP, and
// the client's connection.
func tcpSessions(t *testing.T) (client, server *Session, conn io.ReadWriteCloser) {
	t.Helper()
	a, b := testConnTCP(t)
	// No 250 ms write timeout (upstream's tests' own): on a loaded
	// machine a receiver descheduled that long would end the session,
	// and these tests time nothing.
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 30 * time.Second
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = Server(b, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server, a
}

// WriteFunc: fill is offered at most the send window and the bound; the
// caller's own writes of header and body reach the peer as one frame, in
// order with frames written by Write; a connection without write
// deadlines refuses it.
func TestForkWriteFunc(t *testing.T) {
	client, server, a := tcpSessions(t)
	s, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	body := bytes.Repeat([]byte("spliced"), 1000)
	offered := 0
	for i := 0; i < 3; i++ {
		n, err := s.WriteFunc(len(body), func(n int) (int, error) {
			offered = n
			return n, nil
		}, func(hdr []byte) error {
			if _, err := a.Write(hdr); err != nil {
				return err
			}
			_, err := a.Write(body[:offered])
			return err
		})
		if err != nil || n != len(body) || offered != len(body) {
			t.Fatalf("WriteFunc: %d, %v (offered %d)", n, err, offered)
		}
		want.Write(body)
		if _, err := s.Write([]byte("|plain|")); err != nil {
			t.Fatal(err)
		}
		want.WriteString("|plain|")
	}
	// At the end of the source: its bytes, then its error.
	n, err := s.WriteFunc(10, func(n int) (int, error) { return 3, io.EOF },
		func(hdr []byte) error {
			if _, err := a.Write(hdr); err != nil {
				return err
			}
			_, err := a.Write([]byte("end"))
			return err
		})
	if n != 3 || err != io.EOF {
		t.Fatalf("WriteFunc at the end: %d, %v", n, err)
	}
	want.WriteString("end")
	s.Close()
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(peer)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("peer read %d bytes (%v), want %d in order", len(got), err, want.Len())
	}

	// The window bounds what fill is offered.
	s2, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Write(make([]byte, initialStreamWindow-100)); err != nil {
		t.Fatal(err)
	}
	_, _ = s2.WriteFunc(1<<20, func(n int) (int, error) { offered = n; return 0, io.EOF }, nil)
	if offered != 100 {
		t.Fatalf("fill offered %d bytes with 100 left in the window", offered)
	}

	p1, p2 := testConnPipe(t) // io pipes: no deadlines
	defer p2.Close()
	piped, err := Client(p1, testConfNoKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	defer piped.Close()
	go io.Copy(io.Discard, p2)
	s3, err := piped.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3.WriteFunc(10, nil, nil); !errors.Is(err, ErrNoDirectWrite) {
		t.Fatalf("WriteFunc on a pipe: %v, want ErrNoDirectWrite", err)
	}
}

// SinkTo: whatever the sink takes (all, part, nothing, at random), the
// bytes reach w whole and in order, across small frames (offered to the
// sink) and large ones (queued); a stream carried only by small frames
// the sink takes whole moves more than its window (the window updates
// still flow, though its reader is not woken for those bytes).
func TestForkSinkTo(t *testing.T) {
	client, server, _ := tcpSessions(t)

	run := func(t *testing.T, frames [][]byte, take func(p []byte) int) (got []byte, offered int) {
		t.Helper()
		s, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var out bytes.Buffer
		w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
		try := func(p []byte) int {
			offered++
			n := take(p)
			mu.Lock()
			out.Write(p[:n])
			mu.Unlock()
			return n
		}
		done := make(chan error, 1)
		var total int64
		go func() {
			peer, err := server.AcceptStream()
			if err != nil {
				done <- err
				return
			}
			total, err = peer.SinkTo(w, try, make([]byte, 32<<10))
			done <- err
		}()
		var want int
		for _, f := range frames {
			want += len(f)
		}
		go func() {
			for _, f := range frames {
				if _, err := s.Write(f); err != nil {
					return
				}
			}
			s.Close()
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("stuck: the sender's window was not updated")
		}
		if total != int64(want) {
			t.Fatalf("SinkTo counted %d bytes, want %d", total, want)
		}
		return out.Bytes(), offered
	}

	rnd := rand.New(rand.NewSource(7))
	var frames [][]byte
	var want []byte
	for i := 0; i < 2000; i++ {
		n := 1 + rnd.Intn(200)
		if i%97 == 0 {
			n = 100 << 10 // a large frame: queued, never offered
		}
		f := make([]byte, n)
		rnd.Read(f)
		frames = append(frames, f)
		want = append(want, f...)
	}
	got, offered := run(t, frames, func(p []byte) int { return rnd.Intn(len(p) + 1) })
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d in order", len(got), len(want))
	}
	if offered == 0 {
		t.Fatal("the sink was never offered a frame")
	}

	// 3x the window in 1 KiB frames, all taken by the sink.
	frames = frames[:0]
	want = want[:0]
	for i := 0; i < 3*int(initialStreamWindow)/1024; i++ {
		f := bytes.Repeat([]byte{byte(i)}, 1024)
		frames = append(frames, f)
		want = append(want, f...)
	}
	got, _ = run(t, frames, func(p []byte) int { return len(p) })
	if !bytes.Equal(got, want) {
		t.Fatalf("window test: got %d bytes, want %d", len(got), len(want))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A peer's flood of 1-byte frames to a sunk stream does not make the
// receive loop write each one to the socket: frames that arrive with more
// behind them are queued, and the reader takes them in big reads.
func TestForkSinkFloodQueued(t *testing.T) {
	srv, peer := rawPeer(t)
	writeFrame(t, peer, typeWindowUpdate, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var offered, got atomic.Int64
	done := make(chan error, 1)
	go func() {
		try := func(p []byte) int { offered.Add(1); got.Add(int64(len(p))); return len(p) }
		w := writerFunc(func(p []byte) (int, error) { got.Add(int64(len(p))); return len(p), nil })
		_, err := st.SinkTo(w, try, make([]byte, 32<<10))
		done <- err
	}()
	const frames = 50000
	flood := make([]byte, 0, frames*(headerSize+1))
	h := header(make([]byte, headerSize))
	for i := 0; i < frames; i++ {
		h.encode(typeData, 0, 1, 1)
		flood = append(append(flood, h...), 'x')
	}
	if _, err := peer.Write(flood); err != nil {
		t.Fatal(err)
	}
	writeFrame(t, peer, typeData, flagFIN, 1, nil, 0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("SinkTo did not end")
	}
	if got.Load() != frames {
		t.Fatalf("%d bytes arrived, want %d", got.Load(), frames)
	}
	if n := offered.Load(); n > frames/10 {
		t.Fatalf("the receive loop wrote %d of %d flooded frames one by one", n, frames)
	}
}

// RecvBudget: streams whose readers do not read hold the initial window
// each once the shared budget is spent, not MaxStreamWindowSize each;
// when they are read, everything arrives (no stream is starved: each
// keeps its initial window), and the budget is back to zero after.
func TestForkRecvBudget(t *testing.T) {
	a, b := testConnTCP(t)
	budget := &RecvBudget{Limit: 1 << 20}
	conf := testConfNoKeepAlive()
	conf.MaxStreamWindowSize = 4 << 20
	sconf := testConfNoKeepAlive()
	sconf.MaxStreamWindowSize = 4 << 20
	sconf.RecvBudget = budget
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(b, sconf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	const streams, each = 8, 6 << 20
	var peers []*Stream
	for i := 0; i < streams; i++ {
		s, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			s.Write(bytes.Repeat([]byte{byte(i)}, each))
			s.Close()
		}()
		p, err := server.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p)
		// Read a little of each, so its window grows while the budget
		// allows.
		if _, err := io.ReadFull(p, make([]byte, 300<<10)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // let the writers fill what the windows allow
	limit := int64(streams)*int64(initialStreamWindow) + budget.Limit + 4<<20
	if used := budget.Used(); used > limit {
		t.Fatalf("%d streams not being read hold %d bytes, want at most %d", streams, used, limit)
	}
	for i, p := range peers {
		n, err := io.Copy(io.Discard, p)
		if err != nil || n != each-300<<10 {
			t.Fatalf("stream %d: read %d bytes (%v), want %d", i, n, err, each-300<<10)
		}
	}
	if used := budget.Used(); used != 0 {
		t.Fatalf("budget holds %d bytes after every stream was read", used)
	}
}

// Divert: frames go to take once nothing is queued; what take does not
// take is queued, and later frames queue behind it until the queue is
// read; Pending counts both, Credit returns diverted bytes, and the
// RecvBudget counts diverted bytes as queued ones.
func TestForkDivert(t *testing.T) {
	srv, peer := rawPeer(t)
	budget := &RecvBudget{Limit: 1 << 30}
	srv.config.RecvBudget = budget
	writeFrame(t, peer, typeData, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	frame := func(b string) { writeFrame(t, peer, typeData, 0, 1, []byte(b), uint32(len(b))) }
	pending := func(wantD, wantQ int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, q, err := st.Pending()
			if err != nil {
				t.Fatal(err)
			}
			if d == wantD && q == wantQ {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("pending %d diverted, %d queued; want %d, %d", d, q, wantD, wantQ)
			}
			time.Sleep(time.Millisecond)
		}
	}
	var store bytes.Buffer
	room := 0
	take := func(r *bufio.Reader, n int) (int, error) {
		k := n
		if k > room {
			k = room
		}
		room -= k
		_, err := io.CopyN(&store, r, int64(k))
		return k, err
	}
	frame("queued-first")
	pending(0, len("queued-first"))
	if st.Divert(take, 1<<20) {
		t.Fatal("Divert with bytes queued")
	}
	got := make([]byte, 64)
	n, _ := st.Read(got)
	if string(got[:n]) != "queued-first" || !st.Divert(take, 1<<20) {
		t.Fatalf("read %q; Divert after it refused", got[:n])
	}
	room = 15
	frame("diverted-")   // 9: taken
	frame("half-queued") // 6 taken, 5 queued
	frame("+behind")     // queued: the queue is not empty
	pending(15, 12)
	if used := budget.Used(); used != 27 {
		t.Fatalf("budget counts %d bytes, want 27", used)
	}
	if store.String() != "diverted-half-q" {
		t.Fatalf("taken %q", store.String())
	}
	if err := st.Credit(15); err != nil {
		t.Fatal(err)
	}
	n, _ = st.Read(got)
	if string(got[:n]) != "ueued+behind" {
		t.Fatalf("queued %q", got[:n])
	}
	room = 100
	frame("again")
	pending(5, 0)
	if store.String() != "diverted-half-qagain" {
		t.Fatalf("taken %q", store.String())
	}
	if left := st.Undivert(); left != 5 {
		t.Fatalf("Undivert: %d bytes left, want 5", left)
	}
	if used := budget.Used(); used != 0 {
		t.Fatalf("budget holds %d bytes after Undivert", used)
	}
	frame("read")
	n, _ = io.ReadFull(st, got[:4])
	if string(got[:n]) != "read" {
		t.Fatalf("after Undivert: %q", got[:n])
	}
}

// Divert's window bounds what the peer sends ahead of Credit, and Credit
// opens it again; Undivert waits for a take in progress. (A frame the
// receive loop was reading when Divert came is queued: the reader takes
// queued bytes too.)
func TestForkDivertWindow(t *testing.T) {
	client, server, _ := tcpSessions(t)
	s, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	const total, window = 8 << 20, 64 << 10
	go s.Write(bytes.Repeat([]byte{'w'}, total))
	p, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var held, peak, counted atomic.Int64
	var block atomic.Bool
	inTake, release := make(chan struct{}), make(chan struct{})
	take := func(r *bufio.Reader, n int) (int, error) {
		if block.Load() {
			inTake <- struct{}{}
			<-release
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return 0, err
		}
		if h := held.Add(int64(n)); counted.Load() > 1<<20 && h > peak.Load() {
			peak.Store(h)
		}
		return n, nil
	}
	buf := make([]byte, 1<<20)
	for !p.Divert(take, window) {
		n, err := p.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		counted.Add(int64(n))
	}
	go func() {
		for {
			d, q, err := p.Pending()
			if err != nil {
				return
			}
			if d > 0 {
				held.Add(-int64(d))
				counted.Add(int64(d))
				if p.Credit(d) != nil {
					return
				}
			}
			if q > 0 {
				n, _ := p.Read(buf[:q])
				counted.Add(int64(n))
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for counted.Load() < total {
		if time.Now().After(deadline) {
			t.Fatalf("the sender stalled after %d of %d bytes: Credit does not open the window", counted.Load(), total)
		}
		time.Sleep(time.Millisecond)
	}
	if pk := peak.Load(); pk > window {
		t.Fatalf("%d bytes diverted ahead of Credit, window %d", pk, window)
	}
	block.Store(true)
	go s.Write([]byte("x"))
	select {
	case <-inTake:
	case <-time.After(30 * time.Second):
		t.Fatal("the last frame never reached take")
	}
	undone := make(chan struct{})
	go func() { p.Undivert(); close(undone) }()
	select {
	case <-undone:
		t.Fatal("Undivert returned while a take ran")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-undone
}

// ReadChunks hands queued chunks over whole and in order, copies the part
// of a last chunk it needs, leaves the rest for Read, and ends with
// io.EOF when the peer closes before n bytes.
func TestForkReadChunks(t *testing.T) {
	srv, peer := rawPeer(t)
	writeFrame(t, peer, typeData, flagSYN, 1, nil, 0)
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	rng := rand.New(rand.NewSource(7))
	// Big frames (a chunk each) and small ones (packed), within the
	// initial 256 KiB window.
	for _, size := range []int{40 << 10, 5, 3000, 33 << 10, 100, 60 << 10, 7, 20 << 10, 1, 50 << 10, 9000} {
		b := make([]byte, size)
		rng.Read(b)
		want = append(want, b...)
		writeFrame(t, peer, typeData, 0, 1, b, uint32(len(b)))
	}
	var got []byte
	calls := 0
	n := int64(len(want) - 777)
	m, err := st.ReadChunks(n, func(b []byte) error { calls++; got = append(got, b...); return nil })
	if err != nil || m != n || !bytes.Equal(got, want[:n]) {
		t.Fatalf("ReadChunks: %d of %d bytes, %v, equal %v", m, n, err, len(got) == int(n))
	}
	rest := make([]byte, 777)
	if _, err := io.ReadFull(st, rest); err != nil || !bytes.Equal(rest, want[n:]) {
		t.Fatalf("the rest by Read: %v", err)
	}
	t.Logf("%d bytes in %d writes", m, calls)
	writeFrame(t, peer, typeData, flagFIN, 1, []byte("end"), 3)
	got = got[:0]
	m, err = st.ReadChunks(10, func(b []byte) error { got = append(got, b...); return nil })
	if !errors.Is(err, io.EOF) || m != 3 || string(got) != "end" {
		t.Fatalf("at the peer's close: %d bytes %q, %v; want 3, io.EOF", m, got, err)
	}
}
