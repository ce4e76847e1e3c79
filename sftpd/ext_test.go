package sftpd

import (
	"encoding/binary"
	"io"
	"os"
	"os/user"
	"strconv"
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

// users-groups-by-id@openssh.com: names in request order, "" for an id
// without one; malformed or oversized requests get a STATUS.
func TestUsersGroupsByID(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	grp, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Skip("no group for the current gid")
	}
	uid, _ := strconv.ParseUint(me.Uid, 10, 32)
	gid, _ := strconv.ParseUint(me.Gid, 10, 32)
	const unknown = 3999999999
	ids := func(v ...uint32) string {
		var b []byte
		for _, x := range v {
			b = appendUint32(b, x)
		}
		return string(b)
	}
	send, recv := startServer(t)
	send(appendUint32([]byte{1}, 3))
	if v := recv(); !strings.Contains(string(v), "users-groups-by-id@openssh.com") {
		t.Fatalf("VERSION %q lacks users-groups-by-id", v)
	}
	send(extended(5, "users-groups-by-id@openssh.com", ids(uint32(uid), unknown, uint32(uid)), ids(unknown, uint32(gid))))
	r := recv()
	if r[0] != fxpExtendedReply || binary.BigEndian.Uint32(r[1:5]) != 5 {
		t.Fatalf("reply type %d", r[0])
	}
	users, rest, ok1 := sftpString(r[5:])
	groups, _, ok2 := sftpString(rest)
	if !ok1 || !ok2 {
		t.Fatalf("reply %q", r)
	}
	list := func(b string) []string {
		var out []string
		for rest := []byte(b); len(rest) > 0; {
			s, r, ok := sftpString(rest)
			if !ok {
				t.Fatalf("name list %q", b)
			}
			out, rest = append(out, s), r
		}
		return out
	}
	if got, want := strings.Join(list(users), ","), me.Username+",,"+me.Username; got != want {
		t.Errorf("users %q, want %q", got, want)
	}
	if got, want := strings.Join(list(groups), ","), ","+grp.Name; got != want {
		t.Errorf("groups %q, want %q", got, want)
	}

	send(extended(6, "users-groups-by-id@openssh.com", "abc", ""))
	if r = recv(); r[0] != fxpStatus || binary.BigEndian.Uint32(r[5:9]) != fxBadMessage {
		t.Errorf("malformed: %v", r)
	}
	send(extended(7, "users-groups-by-id@openssh.com", strings.Repeat(ids(unknown), maxIDs), ids(unknown)))
	if r = recv(); r[0] != fxpStatus || !strings.Contains(string(r), "at most 1024") {
		t.Errorf("over the cap: %q", r)
	}
	send(extended(8, "users-groups-by-id@openssh.com", "", ""))
	if r = recv(); r[0] != fxpExtendedReply || len(r) != 13 {
		t.Errorf("empty lists: %v", r)
	}
}
