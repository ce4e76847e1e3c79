package files

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"

	"github.com/tensorlake/tl-agent/internal/copybuf"
)

// An upload over the uplink is written to its file straight from the
// chunks yamux received it in: the agent's API server puts each request's
// connection in its context (WithConn), and when that connection can hand
// its bytes over in place (ChunkReader: an uplink stream), a body of a
// known length of at least directMin skips net/http's reader and the copy
// into a buffer that reader needs, on the one goroutine that also writes
// the file (the one that limits an upload's pace: docs/benchmarks.md,
// "Files through the proxy"). net/http's server does not see those bytes:
// it read only what it buffered past the headers, which the upload takes
// first through its reader. So the answer says Connection: close, as the
// server would for a body left unread, and the proxy opens a new stream
// for its next request.
const directMin = 1 << 20

// ChunkReader is a connection that hands its next n bytes to write in
// place, chunk by chunk (yamux's Stream.ReadChunks, in the in-repo copy).
type ChunkReader interface {
	ReadChunks(n int64, write func([]byte) error) (int64, error)
}

type connKey struct{}

// WithConn is the API server's ConnContext: a request's connection, for
// an upload written from its chunks.
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// uploadBody is a request body that may be written from its
// connection's chunks.
type uploadBody struct {
	r      *http.Request
	via    ChunkReader
	direct bool // bytes went behind the server's reader
}

// upload is r's body, as an uploadBody when its connection and length
// allow.
func upload(r *http.Request) io.Reader {
	via, _ := r.Context().Value(connKey{}).(ChunkReader)
	if via == nil || r.ContentLength < directMin {
		return r.Body
	}
	return &uploadBody{r: r, via: via}
}

func (b *uploadBody) Read(p []byte) (int, error) { return b.r.Body.Read(p) }

// fill writes the body into f, each write through do: first what the
// server read past the headers (one Read with a buffer bigger than the
// server's 4 KiB takes all it holds, or reads the stream directly and
// leaves none), then the rest from the connection's chunks.
func (b *uploadBody) fill(f *os.File, do func(func() error) error) (int64, error) {
	want := b.r.ContentLength
	buf := copybuf.GetSmall()
	k, err := b.r.Body.Read(buf[:min(int64(len(buf)), want)])
	if k > 0 {
		if werr := do(func() error { _, err := f.Write(buf[:k]); return err }); werr != nil {
			copybuf.Put(buf)
			return 0, werr
		}
	}
	copybuf.Put(buf)
	if int64(k) == want {
		return want, nil
	}
	if err != nil {
		return int64(k), errBodyOf(err)
	}
	b.direct = true
	// A write's error is the disk's (no space, say); any other is the
	// body's: the stream ended or failed.
	var ferr error
	n, err := b.via.ReadChunks(want-int64(k), func(p []byte) error {
		ferr = do(func() error { _, err := f.Write(p); return err })
		return ferr
	})
	if err != nil && !(ferr != nil && errors.Is(err, ferr)) {
		err = errBodyOf(err)
	}
	return int64(k) + n, err
}

func errBodyOf(err error) error { return fmt.Errorf("%w: %v", errBody, err) }

// wentDirect says whether the body went behind the server's reader.
func wentDirect(body io.Reader) bool {
	b, ok := body.(*uploadBody)
	return ok && b.direct
}
