package sftpd

import (
	"encoding/binary"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/pkg/sftp"
)

// pipeCloser lets the test's pipes stand in for stdin and stdout.
type pipeCloser struct{ *io.PipeWriter }

func startServer(t *testing.T) (send func(body []byte), recv func() []byte) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	srv, err := sftp.NewServer(newExtLayer(inR, pipeCloser{outW}), sftp.WithAllocator())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	send = func(body []byte) {
		if _, err := inW.Write(append(appendUint32(nil, uint32(len(body))), body...)); err != nil {
			t.Fatal(err)
		}
	}
	recv = func() []byte {
		var hdr [4]byte
		if _, err := io.ReadFull(outR, hdr[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(outR, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	return send, recv
}

func extended(id uint32, name string, args ...string) []byte {
	b := appendString(appendUint32([]byte{fxpExtended}, id), name)
	for _, a := range args {
		b = appendString(b, a)
	}
	return b
}

func TestExtensions(t *testing.T) {
	send, recv := startServer(t)
	send(appendUint32([]byte{1}, 3)) // INIT, version 3
	v := recv()
	if v[0] != fxpVersion || !strings.Contains(string(v), "limits@openssh.com") || !strings.Contains(string(v), "expand-path@openssh.com") ||
		!strings.Contains(string(v), "posix-rename@openssh.com") {
		t.Fatalf("VERSION %q lacks the extensions", v)
	}

	send(extended(7, "limits@openssh.com"))
	r := recv()
	if r[0] != fxpExtendedReply || binary.BigEndian.Uint32(r[1:5]) != 7 || len(r) != 5+32 {
		t.Fatalf("limits reply %v", r)
	}
	if read := binary.BigEndian.Uint64(r[13:21]); read != maxData {
		t.Errorf("max read %d, want %d", read, maxData)
	}

	home, _ := os.UserHomeDir()
	for _, c := range []struct{ in, want string }{{"~/a/../b", home + "/b"}, {"~", home}, {"/x//y", "/x/y"}} {
		send(extended(8, "expand-path@openssh.com", c.in))
		r = recv()
		name, _, ok := sftpString(r[9:])
		if r[0] != fxpName || !ok || name != c.want {
			t.Errorf("expand-path %q: %q (type %d), want %q", c.in, name, r[0], c.want)
		}
	}
	send(extended(9, "expand-path@openssh.com", "~no-such-user-here/x"))
	if r = recv(); r[0] != fxpStatus {
		t.Errorf("unknown user: type %d, want STATUS", r[0])
	}

	// Other packets still reach pkg/sftp: REALPATH of ".".
	send(appendString(appendUint32([]byte{16}, 10), "."))
	if r = recv(); r[0] != fxpName {
		t.Errorf("realpath through the layer: type %d", r[0])
	}
}
