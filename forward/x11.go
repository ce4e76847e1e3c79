package forward

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// X11 forwarding (`ssh -X`, `-Y`), as OpenSSH's sshd does it with its
// defaults (X11DisplayOffset 10, X11UseLocalhost yes): an x11-req makes a
// display, a TCP listener on the sandbox's loopback at port 6000+N for the
// first free N from 10, and each connection to it becomes an "x11"
// channel to the client (RFC 4254 §6.3).
//
// The cookie is never given to the sandbox: xauth gets a fake one of the
// same length and protocol (FakeCookie), and the display swaps it for the
// client's in each connection's setup packet, refusing a connection that
// does not carry it. (OpenSSH's client already sends a fake cookie in
// x11-req and swaps in the real one itself; a client that sends its real
// one keeps it out of the sandbox too.)

// Bounds and numbering of X11 displays.
const (
	// X11DisplayOffset is the first display number (OpenSSH's default).
	X11DisplayOffset = 10
	// X11MaxDisplay bounds display numbers, as OpenSSH's MAX_DISPLAYS:
	// displays 10..999, ports 6010..6999.
	X11MaxDisplay = 1000
	// MaxX11Conns bounds the X11 connections of one display at once.
	MaxX11Conns = 64
	// x11SetupTimeout bounds the wait for an X client's setup packet: a
	// connection that sends nothing does not hold a slot for ever.
	x11SetupTimeout = 10 * time.Second
	// maxX11Cookie bounds the cookie of an x11-req, in bytes
	// (MIT-MAGIC-COOKIE-1 is 16).
	maxX11Cookie = 256
)

// X11Request is an x11-req's payload (RFC 4254 §6.3.1).
type X11Request struct {
	Single bool   // single connection: stop listening after the first
	Proto  string // authentication protocol, e.g. MIT-MAGIC-COOKIE-1
	Cookie string // authentication cookie, hex
	Screen uint32
}

// ParseX11Request reads and checks an x11-req payload. The protocol name
// goes to xauth's input, so it is held to the characters protocol names
// use (OpenSSH checks the same, CVE-2016-3115).
func ParseX11Request(payload []byte) (X11Request, []byte, error) {
	var r X11Request
	if err := gossh.Unmarshal(payload, &r); err != nil {
		return r, nil, errors.New("malformed x11-req")
	}
	if r.Proto == "" || len(r.Proto) > 64 {
		return r, nil, errors.New("x11-req: bad authentication protocol")
	}
	for _, ch := range r.Proto {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '.' || ch == '_') {
			return r, nil, errors.New("x11-req: bad authentication protocol")
		}
	}
	cookie, err := hex.DecodeString(r.Cookie)
	if err != nil || len(cookie) == 0 || len(cookie) > maxX11Cookie {
		return r, nil, errors.New("x11-req: the cookie must be 1 to 256 bytes in hex")
	}
	return r, cookie, nil
}

// X11Display is one session's forwarded display. Close it when the
// session ends; the SSH connection's end closes it too.
type X11Display struct {
	Number     int
	Screen     uint32
	Proto      string
	FakeCookie string // hex: what the sandbox's xauth gets

	c      *sshConn
	conn   *gossh.ServerConn
	single bool
	real   []byte
	fake   []byte
	keys   []string      // its listeners in c.listeners
	slots  chan struct{} // connections open at once, MaxX11Conns

	mu    sync.Mutex
	taken bool // guarded by mu; single: the one connection came
	once  sync.Once
}

// Display is the DISPLAY value, as sshd sets it: localhost:N.screen.
func (d *X11Display) Display() string {
	return "localhost:" + strconv.Itoa(d.Number) + "." + strconv.FormatUint(uint64(d.Screen), 10)
}

// AuthDisplay is the display's name for xauth, as sshd gives it
// (unix:N.screen: a local entry of this host, which X clients use for
// localhost:N).
func (d *X11Display) AuthDisplay() string {
	return "unix:" + strconv.Itoa(d.Number) + "." + strconv.FormatUint(uint64(d.Screen), 10)
}

// X11Forward makes the display of an x11-req on the connection of ctx.
func X11Forward(ctx ssh.Context, r X11Request, cookie []byte) (*X11Display, error) {
	c := stateOf(ctx)
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if c == nil || conn == nil {
		return nil, errors.New("no connection state")
	}
	// Random, and never the real one (a 1-byte cookie would be, 1 time
	// in 256).
	fake := make([]byte, len(cookie))
	for {
		if _, err := rand.Read(fake); err != nil {
			return nil, err
		}
		if string(fake) != string(cookie) {
			break
		}
	}
	n, lns, err := listenX11(X11DisplayOffset, X11MaxDisplay)
	if err != nil {
		return nil, err
	}
	d := &X11Display{Number: n, Screen: r.Screen, Proto: r.Proto, FakeCookie: hex.EncodeToString(fake),
		c: c, conn: conn, single: r.Single, real: cookie, fake: fake, slots: make(chan struct{}, MaxX11Conns)}
	for i, ln := range lns {
		key := "x11:" + ln.Addr().String()
		if err := c.add(key, ln); err != nil {
			for _, l := range lns[i:] {
				l.Close()
			}
			d.Close()
			return nil, err
		}
		d.keys = append(d.keys, key)
	}
	for _, ln := range lns {
		c.goTrack(func() { d.serve(ln) })
	}
	c.log.Info().Int("display", n).Bool("single", r.Single).Msg("ssh X11 forwarding")
	return d, nil
}

// listenX11 takes the first free display in [first, end): port 6000+N
// on 127.0.0.1 and, when the sandbox has it, on ::1 (as sshd, so no one
// else can take the display's other loopback address).
func listenX11(first, end int) (int, []net.Listener, error) {
	if err := loopbackUp(); err != nil {
		return 0, nil, err
	}
	for n := first; n < end; n++ {
		port := strconv.Itoa(6000 + n)
		ln4, err := net.Listen("tcp4", "127.0.0.1:"+port)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			return 0, nil, fmt.Errorf("X11 forwarding needs the sandbox's loopback network: %w", err)
		}
		ln6, err := net.Listen("tcp6", "[::1]:"+port)
		if errors.Is(err, syscall.EADDRINUSE) {
			ln4.Close()
			continue
		}
		if err != nil { // no IPv6 loopback: 127.0.0.1 alone
			return n, []net.Listener{ln4}, nil
		}
		return n, []net.Listener{ln4, ln6}, nil
	}
	return 0, nil, fmt.Errorf("X11 forwarding: every display %d..%d is taken (ports %d..%d on 127.0.0.1)",
		first, end-1, 6000+first, 6000+end-1)
}

// loopbackUp tells whether X clients could reach 127.0.0.1: in a network
// namespace whose loopback is down a listener still binds, but every
// connect fails (ENETUNREACH). A UDP connect asks the routing table only;
// nothing is sent.
func loopbackUp() error {
	c, err := net.Dial("udp4", "127.0.0.1:6000")
	if err != nil {
		return fmt.Errorf("X11 forwarding needs the sandbox's loopback network, which is down or missing: %w", err)
	}
	c.Close()
	return nil
}

// Close stops listening; the display's open connections go on until they
// end or the SSH connection does. Safe twice.
func (d *X11Display) Close() {
	d.once.Do(func() {
		for _, k := range d.keys {
			d.c.remove(k)
		}
	})
}

// serve accepts X clients until the listener is closed.
func (d *X11Display) serve(ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.c.log.Debug().Err(err).Msg("x11 accept")
			}
			return
		}
		if !d.admit() {
			nc.Close()
			continue
		}
		select {
		case d.slots <- struct{}{}:
		default:
			d.c.log.Info().Int("display", d.Number).Int("limit", MaxX11Conns).Msg("x11 connection refused: too many on this display")
			nc.Close()
			continue
		}
		ok := d.c.hold(nc) // until relay holds it
		if ok {
			ok = d.c.goTrack(func() {
				defer func() { <-d.slots }()
				defer d.c.release(nc)
				d.serveConn(nc)
			})
		}
		if !ok {
			<-d.slots
			nc.Close()
			return
		}
	}
}

// admit takes the one connection of a single-connection display, and
// then stops listening; any connection of another display.
func (d *X11Display) admit() bool {
	if !d.single {
		return true
	}
	d.mu.Lock()
	first := !d.taken
	d.taken = true
	d.mu.Unlock()
	if first {
		d.Close()
	}
	return first
}

// serveConn checks the X client's setup packet, swaps the cookie, opens
// the x11 channel to the client and relays.
func (d *X11Display) serveConn(nc net.Conn) {
	_ = nc.SetReadDeadline(time.Now().Add(x11SetupTimeout))
	s, err := readX11Setup(nc)
	if err != nil {
		d.c.log.Info().Err(err).Int("display", d.Number).Msg("x11 connection dropped")
		nc.Close()
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	if string(s.name) != d.Proto || string(s.cookie) != string(d.fake) {
		d.c.log.Info().Int("display", d.Number).Msg("x11 connection refused: wrong authorization")
		refuseX11(nc, s, fmt.Sprintf("tl-agent: wrong X11 authorization for display %d (is xauth installed in the sandbox? xauth list should show its cookie for unix:%d)", d.Number, d.Number))
		return
	}
	oh, op := splitAddr(nc.RemoteAddr())
	ch, reqs, err := d.conn.OpenChannel("x11", gossh.Marshal(&struct {
		Addr string
		Port uint32
	}{oh, op}))
	if err != nil {
		d.c.log.Info().Err(err).Int("display", d.Number).Msg("x11 channel refused by the client")
		refuseX11(nc, s, "tl-agent: the SSH client refused the X11 connection: "+err.Error())
		return
	}
	if _, err := ch.Write(s.withCookie(d.real)); err != nil {
		ch.Close()
		nc.Close()
		if !d.c.goTrack(func() { gossh.DiscardRequests(reqs) }) {
			go gossh.DiscardRequests(reqs) // the connection is gone: ends at once
		}
		return
	}
	d.c.relay(ch, reqs, nc)
}

// refuseX11 answers a setup with Failed and reason, then closes.
func refuseX11(nc net.Conn, s *x11Setup, reason string) {
	_ = nc.SetWriteDeadline(time.Now().Add(x11SetupTimeout))
	_, _ = nc.Write(x11Failed(s.order, reason))
	nc.Close()
}
