package uplink

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// fileFiller is a PipeFiller over a file, as the files capability's
// downloads are; fills counts the splices, refuse makes the first fill
// fail as a file system without splice does.
type fileFiller struct {
	f      *os.File
	fills  int
	reads  int
	refuse bool
}

func (f *fileFiller) Read(p []byte) (int, error) { f.reads++; return f.f.Read(p) }

func (f *fileFiller) FillPipe(fd int, n int) (int, error) {
	f.fills++
	if f.refuse {
		return 0, unix.EINVAL
	}
	k, err := unix.Splice(int(f.f.Fd()), nil, fd, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return 0, err
	}
	if k == 0 {
		return 0, io.EOF
	}
	return int(k), nil
}

// tcpLink is a yamux session pair over loopback TCP; the sending side is
// wrapped in Coalesce when coalesce is set, as the agent's is.
func tcpLink(t *testing.T, coalesce bool) (send, recv *yamux.Session) {
	t.Helper()
	a, b := tcpPair(t)
	if coalesce {
		a = Coalesce(a)
	}
	send, err := yamux.Server(a, MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	recv, err = yamux.Client(b, MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { send.Close(); recv.Close() })
	return send, recv
}

// sendFile sends a file from offset off through a wrapped stream's
// ReadFrom and returns what the peer read.
func sendFile(t *testing.T, coalesce bool, src *fileFiller, off int64) []byte {
	t.Helper()
	send, recv := tcpLink(t, coalesce)
	if _, err := src.f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		st, err := recv.OpenStream()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(st)
		got <- b
	}()
	st, err := send.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w := Wrap(st).(*Stream)
	if _, err := w.ReadFrom(src); err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	w.CloseWrite()
	return <-got
}

func testFile(t *testing.T, size int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, data
}

// A PipeFiller's bytes cross a plain socket by splice, in order and
// whole, also from an offset that is not page-aligned (a download after
// net/http's first 512 bytes, a Range); where splice cannot be taken (a
// link not under Coalesce, as a TLS one; a file system that refuses) the
// bytes are copied, just as whole.
func TestReadFromSplicesPipeFillers(t *testing.T) {
	const size = 5<<20 + 12345
	for _, tc := range []struct {
		name      string
		coalesce  bool
		refuse    bool
		off       int64
		wantFills bool
	}{
		{"spliced", true, false, 0, true},
		{"spliced from an odd offset", true, false, 512, true},
		{"not a plain socket", false, false, 100, false},
		{"file system refuses", true, true, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, data := testFile(t, size)
			src := &fileFiller{f: f, refuse: tc.refuse}
			got := sendFile(t, tc.coalesce, src, tc.off)
			if !bytes.Equal(got, data[tc.off:]) {
				t.Fatalf("peer got %d bytes, want %d equal ones", len(got), size-tc.off)
			}
			if tc.wantFills && (src.fills < size/MaxWriteChunk || src.reads > 0) {
				t.Fatalf("%d fills and %d reads: the bytes were not spliced", src.fills, src.reads)
			}
			if !tc.wantFills && src.reads == 0 {
				t.Fatal("no reads: the copy path was not taken")
			}
		})
	}
}
