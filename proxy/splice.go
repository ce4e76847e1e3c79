package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/internal/reqid"
	"github.com/tensorlake/tl-agent/uplink"
)

// A download through the proxy is spliced: its body goes from the uplink's
// socket to the client's through a pipe, never copied through the process
// (uplink.Stream.SpliceTo). Before, the reverse proxy read it from the
// stream into its buffer and wrote it to the client: two copies in the
// kernel and one in the process per byte, the half of the machine's CPU a
// download cost that was the proxy's (docs/benchmarks.md, "Files through
// the proxy").
//
// httputil.ReverseProxy copies every body with its own Read/Write loop,
// which no source or writer can turn into a splice, so ModifyResponse
// serves a bulk body itself (spliceResponse) and reports errSpliced, which
// upstreamError takes as done. Only a plain body qualifies: a GET's 200 or
// 206 of a known length of at least spliceMin (smaller ones are not worth
// a pipe), no trailers. Everything else, and a client or uplink that is
// not a plain socket, goes the usual way.
const spliceMin = 1 << 20

// errSpliced is ModifyResponse's report that it wrote the response.
var errSpliced = errors.New("proxy: the response was spliced")

// writerKey keys the client's ResponseWriter in the outgoing request's
// context, for spliceResponse.
type writerKey struct{}

// splicer is an uplink stream that can splice its bytes to a socket
// (uplink.Stream, through relayCounter).
type splicer interface {
	SpliceTo(dst net.Conn, n int64, stall time.Duration) (done, spliced int64, err error)
}

// spliceResponse writes resp to the client by splice when it qualifies,
// and then returns errSpliced; else it returns nil and changes nothing.
func (p *Proxy) spliceResponse(resp *http.Response) error {
	ctx := resp.Request.Context()
	w, _ := ctx.Value(writerKey{}).(http.ResponseWriter)
	s, _ := ctx.Value(streamKey{}).(*idleShrinker)
	if w == nil || s == nil || !spliceable(resp) {
		return nil
	}
	c := s.conn.Load()
	if c == nil {
		return nil
	}
	conn := *c
	stream, ok := conn.(splicer)
	rf, ok2 := serverWriter(w).(io.ReaderFrom)
	if !ok || !ok2 {
		return nil
	}
	// A client gone ends the wait for the sandbox's bytes, as it ends the
	// transport's read on the usual path.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	// As ReverseProxy does after ModifyResponse (hop-by-hop headers are
	// gone already); then the headers go out at once.
	for k, vv := range resp.Header {
		for _, v := range vv {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if err := http.NewResponseController(w).Flush(); err != nil {
		return errSpliced // the client is gone; the server closes it
	}
	body := &splicedBody{body: resp.Body, stream: stream, left: resp.ContentLength, stall: p.cfg.Limits.WriteStallTimeout}
	n, err := rf.ReadFrom(body)
	if err != nil || n != resp.ContentLength {
		// The response is short: net/http closes the connection after a
		// body shorter than its Content-Length, so the client sees the cut.
		log := reqid.Logger(ctx, p.log)
		log.Debug().Err(err).Int64("sent", n).Int64("size", resp.ContentLength).Msg("spliced response cut")
	}
	return errSpliced
}

// spliceable: a GET's whole or partial body of a known, big length, with
// nothing after it.
func spliceable(resp *http.Response) bool {
	return resp.Request.Method == http.MethodGet &&
		(resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent) &&
		resp.ContentLength >= spliceMin && len(resp.TransferEncoding) == 0 &&
		len(resp.Trailer) == 0 && resp.Header.Get("Trailer") == "" && !resp.Uncompressed
}

// serverWriter is net/http's own ResponseWriter under the proxy's
// wrappers (stallWriter): its ReadFrom hands the body to the connection
// once the headers are out.
func serverWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// splicedBody is a response body the client's connection takes whole
// (netx.ConnWriterTo, reached through net/http's response.ReadFrom): what
// the transport read past the headers first, then the rest by splice
// from the stream. Read is the copy net/http falls back to where the
// connection is not one of the proxy's listener's.
type splicedBody struct {
	body   io.Reader // the transport's
	stream splicer
	left   int64
	stall  time.Duration
}

func (b *splicedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	n, err := b.body.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	return n, err
}

// WriteToConn writes the body to the client's connection c. One Read
// of the transport's body returns just what its read buffer holds past
// the headers (with a buffer at least as big as that one, 4 KiB: with
// none held, it reads the stream directly and holds none), so the rest
// is on the stream.
func (b *splicedBody) WriteToConn(c net.Conn) (int64, error) {
	buf := copybuf.GetSmall()
	defer copybuf.Put(buf)
	n, err := b.Read(buf)
	if n > 0 {
		var w io.Writer = c
		if b.stall > 0 {
			w = &stallConn{Conn: c, timeout: b.stall}
		}
		if m, werr := w.Write(buf[:n]); werr != nil {
			return int64(m), werr
		}
	}
	if err != nil || b.left == 0 {
		if err == io.EOF && b.left > 0 {
			err = io.ErrUnexpectedEOF
		}
		return int64(n), err
	}
	m, _, err := b.stream.SpliceTo(c, b.left, b.stall)
	b.left -= m
	return int64(n) + m, err
}

// An upload through the proxy is spliced too: a request body of a known
// length of at least spliceMin goes from the client's socket into the
// pipe the uplink splices its frames from (progressBody as an
// uplink.PipeFiller; uplink.Stream.ReadFrom reaches it through the
// transport's LimitReader), so the proxy copies none of its bytes.
// net/http's server does not know: its reader of the body saw only what
// it had buffered past the headers. So the server is told to close the
// connection after the answer (Connection: close, set in ModifyResponse),
// as it would for a body the handler left unread, and the client does not
// send another request on it; Read says EOF once the declared length was
// taken, so the transport's check for bytes past it does not wait on the
// client.

// spliceBody gives out, the outgoing request, its progressBody back in
// place of the reverse proxy's wrapper when the upload can be spliced, so
// the uplink sees a PipeFiller. Like that wrapper it does not close the
// server's body (net/http does, after the handler), and it refuses reads
// once the handler returned (the transport's goroutine may outlive it).
func spliceBody(out *http.Request) {
	b, _ := out.Context().Value(bodyKey{}).(*progressBody)
	if b != nil && b.sock != nil && out.Body != nil {
		out.Body = splicingBody{b}
	}
}

type splicingBody struct{ *progressBody }

func (splicingBody) Close() error { return nil }

// clientConnKey keys the client's connection in a request's context.
type clientConnKey struct{}

// clientConnContext is the front door server's ConnContext: an upload's
// splice needs the client's socket.
func clientConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, clientConnKey{}, c)
}

// spliceFromClient readies b to be spliced from the client's socket, if
// the body is big and the connection a plain socket.
func (b *progressBody) spliceFromClient(req *http.Request) {
	c, _ := req.Context().Value(clientConnKey{}).(net.Conn)
	if c == nil || req.ContentLength < spliceMin {
		return
	}
	if rc := netx.Socket(c); rc != nil {
		b.sock, b.left = rc, req.ContentLength
	}
}

// readCounted is Read on a body that may be spliced: what the first
// FillPipe kept of the server's buffer comes first, then the server's
// reader; EOF once the declared length is taken.
func (b *progressBody) readCounted(buf []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if len(b.head) > 0 {
		n := copy(buf, b.head)
		b.takeHead(n)
		return n, nil
	}
	n, err := b.body.Read(buf)
	b.left -= int64(n)
	return n, err
}

// FillPipe moves up to n bytes of the body into the pipe fd
// (uplink.PipeFiller): first what the server read past the headers,
// through its reader (one Read with a buffer at least as big as the
// server's 4 KiB takes all it holds), then by splice from the socket. It
// waits for the client's first byte; right after taking fewer bytes than
// asked it does not wait (EAGAIN), so a frame goes out with what came.
func (b *progressBody) FillPipe(fd int, n int) (int, error) {
	if b.sock == nil {
		return 0, unix.EINVAL // not a plain socket: the uplink copies
	}
	return b.timed(func() (int, error) { return b.fill(fd, n) })
}

func (b *progressBody) fill(fd int, n int) (int, error) {
	if !b.drained {
		b.drained = true
		buf := copybuf.GetSmall()
		k, err := b.body.Read(buf[:min(int64(len(buf)), b.left)])
		b.head = buf[:k]
		if err != nil && !(errors.Is(err, io.EOF) && int64(k) == b.left) {
			b.takeHead(0)
			return 0, err
		}
	}
	if b.left <= 0 {
		return 0, io.EOF
	}
	if len(b.head) > 0 {
		k, err := unix.Write(fd, b.head[:min(n, len(b.head))])
		if err != nil {
			return 0, err
		}
		b.takeHead(k)
		return k, nil
	}
	want := int(min(int64(n), b.left))
	k, err := uplink.FillFromSocket(b.sock, fd, want, !b.short)
	b.left -= int64(k)
	b.short = k > 0 && k < want
	if k > 0 {
		b.mu.Lock()
		b.spliced = true
		b.mu.Unlock()
		if b.splicedBytes != nil {
			b.splicedBytes.Add(float64(k))
		}
	}
	return k, err
}

// takeHead drops the first n bytes of head, and its buffer once empty.
func (b *progressBody) takeHead(n int) {
	b.left -= int64(n)
	b.head = b.head[n:]
	if len(b.head) == 0 && b.head != nil {
		copybuf.Put(b.head[:0:cap(b.head)])
		b.head = nil
	}
}

// wasSpliced says whether the body was taken from the client's socket
// behind the server's reader (nil-safe).
func (b *progressBody) wasSpliced() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spliced
}
