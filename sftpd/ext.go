package sftpd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tensorlake/tl-agent/identity"
)

// OpenSSH extensions that pkg/sftp lacks, served by a thin layer between
// the pipes and pkg/sftp's Server:
//   - limits@openssh.com: lets OpenSSH's client use 255 KiB reads and
//     writes instead of 32 KiB, as against OpenSSH's sftp-server;
//   - expand-path@openssh.com: "~/x" and "~user/x", which scp needs in its
//     SFTP mode for "~user" paths;
//   - users-groups-by-id@openssh.com: owner and group names, which
//     OpenSSH's client prints in `ls -l` (of single files, which it
//     formats itself, numeric without this).
// The layer reads whole request packets, answers these itself and passes
// every other packet through unchanged; on the way out it adds these
// extensions to the VERSION packet and keeps its own replies from landing
// inside a packet pkg/sftp is writing.

// SFTP packet types and status codes (draft-ietf-secsh-filexfer-02).
const (
	fxpVersion       = 2
	fxpStatus        = 101
	fxpName          = 104
	fxpExtended      = 200
	fxpExtendedReply = 201

	fxNoSuchFile = 2
	fxFailure    = 4
	fxBadMessage = 5
)

// maxPacket is pkg/sftp's largest incoming message; the limits reported
// keep a request with 255 KiB of data under it, as OpenSSH does.
const (
	maxPacket = 256 << 10
	maxData   = maxPacket - 1024
)

var ourExtensions = [][2]string{
	{"limits@openssh.com", "1"}, {"expand-path@openssh.com", "1"}, {"users-groups-by-id@openssh.com", "1"},
}

// maxIDs bounds the uids and gids (together) of one users-groups-by-id
// request: each costs a read of /etc/passwd or /etc/group, and the reply
// must fit in a packet. OpenSSH's client asks for the distinct owners of
// one listing.
const maxIDs = 1024

// extLayer is the io.ReadWriteCloser pkg/sftp's Server runs on.
type extLayer struct {
	in  io.Reader
	out io.WriteCloser

	// Reading side (pkg/sftp's goroutine only).
	buf []byte // the current packet, length prefix included
	off int    // bytes of buf already handed out

	// Writing side. mu is held from the first byte of an outgoing packet
	// to its last, across pkg/sftp's header and payload writes.
	mu      sync.Mutex
	rem     int  // bytes still due in the packet being written
	started bool // VERSION already sent
}

func newExtLayer(in io.Reader, out io.WriteCloser) *extLayer {
	return &extLayer{in: bufio.NewReaderSize(in, 64<<10), out: out}
}

func (l *extLayer) Close() error { return l.out.Close() }

// Read hands pkg/sftp the incoming stream, minus the requests answered here.
func (l *extLayer) Read(p []byte) (int, error) {
	for l.off == len(l.buf) {
		if err := l.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, l.buf[l.off:])
	l.off += n
	return n, nil
}

// next reads one whole packet; ours are answered and skipped.
func (l *extLayer) next() error {
	var hdr [4]byte
	if _, err := io.ReadFull(l.in, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxPacket {
		return fmt.Errorf("sftp packet of %d bytes", n)
	}
	if cap(l.buf) < int(n)+4 {
		l.buf = make([]byte, int(n)+4)
	}
	l.buf = l.buf[:int(n)+4]
	copy(l.buf, hdr[:])
	if _, err := io.ReadFull(l.in, l.buf[4:]); err != nil {
		return err
	}
	l.off = 0
	body := l.buf[4:]
	if body[0] != fxpExtended || len(body) < 9 {
		return nil
	}
	id := binary.BigEndian.Uint32(body[1:5])
	name, rest, ok := sftpString(body[5:])
	if !ok {
		return nil
	}
	var reply []byte
	switch name {
	case "limits@openssh.com":
		reply = appendUint32(nil, id)
		for _, v := range []uint64{maxPacket, maxData, maxData, 0} {
			reply = binary.BigEndian.AppendUint64(reply, v)
		}
		reply = append([]byte{fxpExtendedReply}, reply...)
	case "expand-path@openssh.com":
		p, _, ok := sftpString(rest)
		if !ok {
			return nil
		}
		reply = expandReply(id, p)
	case "users-groups-by-id@openssh.com":
		reply = namesReply(id, rest)
	default:
		return nil
	}
	l.off = len(l.buf) // consumed here
	return l.send(reply)
}

// send writes one whole packet of ours between pkg/sftp's packets.
func (l *extLayer) send(body []byte) error {
	pkt := appendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	pkt = append(pkt, body...)
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.out.Write(pkt)
	return err
}

// Write passes pkg/sftp's packets out whole, adding our extensions to the
// first one (VERSION, which pkg/sftp writes in one piece).
func (l *extLayer) Write(b []byte) (int, error) {
	if l.rem == 0 {
		if len(b) < 5 {
			return 0, errors.New("sftp: short packet header")
		}
		l.mu.Lock()
		l.rem = 4 + int(binary.BigEndian.Uint32(b[:4]))
		if !l.started && b[4] == fxpVersion && len(b) == l.rem {
			l.started = true
			out := append([]byte(nil), b...)
			for _, e := range ourExtensions {
				out = appendString(appendString(out, e[0]), e[1])
			}
			binary.BigEndian.PutUint32(out[:4], uint32(len(out)-4))
			l.rem = 0
			_, err := l.out.Write(out)
			l.mu.Unlock()
			return len(b), err
		}
	}
	if len(b) > l.rem {
		return 0, errors.New("sftp: write across packets")
	}
	n, err := l.out.Write(b)
	l.rem -= n
	if l.rem == 0 || err != nil {
		l.rem = 0
		l.mu.Unlock()
	}
	return n, err
}

// expandReply answers expand-path: "~" and "~/x" are the user's home,
// "~user/x" that user's, relative paths are from the working directory;
// the result is cleaned, not resolved (OpenSSH does the same).
func expandReply(id uint32, p string) []byte {
	full, err := expandPath(p)
	if err != nil {
		return statusReply(id, fxNoSuchFile, err.Error())
	}
	body := appendUint32([]byte{fxpName}, id)
	body = appendUint32(body, 1)
	body = appendString(appendString(body, full), full)
	return appendUint32(body, 0) // no attributes
}

func expandPath(p string) (string, error) {
	if strings.HasPrefix(p, "~") {
		name, rest, _ := strings.Cut(p[1:], "/")
		var home string
		if name == "" {
			h, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			home = h
		} else {
			u, err := user.Lookup(name)
			if err != nil {
				return "", fmt.Errorf("no such user %s", name)
			}
			home = u.HomeDir
		}
		p = path.Join(home, rest)
	}
	if !path.IsAbs(p) {
		wd, err := os.Getwd()
		if err != nil {
			return "", err
		}
		p = filepath.Join(wd, p)
	}
	return path.Clean(p), nil
}

// namesReply answers users-groups-by-id (OpenSSH's PROTOCOL): two strings
// packing uint32 uids and gids; the reply is two strings packing their
// names in the same order, "" for an id without one.
func namesReply(id uint32, req []byte) []byte {
	uids, rest, ok1 := sftpString(req)
	gids, _, ok2 := sftpString(rest)
	if !ok1 || !ok2 || len(uids)%4 != 0 || len(gids)%4 != 0 {
		return statusReply(id, fxBadMessage, "users-groups-by-id: malformed id lists")
	}
	if n := (len(uids) + len(gids)) / 4; n > maxIDs {
		return statusReply(id, fxFailure, fmt.Sprintf("users-groups-by-id: %d ids, at most %d per request", n, maxIDs))
	}
	body := appendUint32([]byte{fxpExtendedReply}, id)
	body = appendString(body, string(names(uids, identity.UserName)))
	body = appendString(body, string(names(gids, identity.GroupName)))
	if len(body) > maxPacket {
		return statusReply(id, fxFailure, "users-groups-by-id: the names do not fit in one reply")
	}
	return body
}

// names packs name(id) for each uint32 of ids, each looked up once.
func names(ids string, name func(uint32) string) []byte {
	var out []byte
	seen := map[uint32]string{}
	for i := 0; i+4 <= len(ids); i += 4 {
		v := binary.BigEndian.Uint32([]byte(ids[i : i+4]))
		n, ok := seen[v]
		if !ok {
			n = name(v)
			seen[v] = n
		}
		out = appendString(out, n)
	}
	return out
}

func statusReply(id, code uint32, msg string) []byte {
	body := appendUint32([]byte{fxpStatus}, id)
	body = appendUint32(body, code)
	return appendString(appendString(body, msg), "")
}

func sftpString(b []byte) (string, []byte, bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

func appendUint32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

func appendString(b []byte, s string) []byte {
	return append(appendUint32(b, uint32(len(s))), s...)
}
