package proxy

import (
	"errors"
	"fmt"
	"io"
	"sync"

	gossh "golang.org/x/crypto/ssh"
)

// The SSH front door terminates the user's SSH connection and opens a
// second one to the agent over the uplink; this file relays everything
// between the two, in both directions: channels of every type (sessions
// and forwards opened by the user; forwarded-tcpip, forwarded-streamlocal
// and auth-agent channels opened by the agent), global requests with their
// replies (tcpip-forward's allocated port, keepalives), channel requests
// with their replies, data, stderr, EOF and close.

// sshEnd is one side: a connection with its incoming channels and requests.
type sshEnd struct {
	conn  gossh.Conn
	chans <-chan gossh.NewChannel
	reqs  <-chan *gossh.Request
}

// bridge relays between user and agent until either connection ends, then
// closes both and returns when every relay goroutine has finished. The
// agent's side starts when its connection is made (sshagent.go), which
// may be never. shortcut, when set, may take a user's channel itself (and
// return true) instead of relaying it to the agent. userAdmit and
// agentAdmit count the channels each side opens.
func bridge(user sshEnd, agent *agentLink, shortcut func(gossh.NewChannel) bool, userAdmit, agentAdmit admitFunc) {
	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	toUser := func() (gossh.Conn, error) { return user.conn, nil }
	// up runs here (before Wait) or in a relay goroutine of the user's
	// side: wg is never zero when it adds.
	agent.start(func(a sshEnd) {
		run(func() { relayGlobal(a.reqs, func(*gossh.Request) gossh.Conn { return user.conn }) })
		run(func() { relayChannels(a.chans, toUser, &wg, nil, agentAdmit) })
		run(func() { _ = a.conn.Wait(); user.conn.Close() })
	})
	run(func() { relayGlobal(user.reqs, agent.forRequest) })
	run(func() { relayChannels(user.chans, agent.get, &wg, shortcut, userAdmit) })
	run(func() { _ = user.conn.Wait(); agent.close() })
	wg.Wait()
}

// relayGlobal passes each global request to the connection to returns,
// and its reply back; nil is a failure reply.
func relayGlobal(in <-chan *gossh.Request, to func(*gossh.Request) gossh.Conn) {
	for req := range in {
		ok, payload, err := false, []byte(nil), error(nil)
		if c := to(req); c != nil {
			ok, payload, err = c.SendRequest(req.Type, req.WantReply, req.Payload)
		}
		if req.WantReply {
			if err != nil {
				ok, payload = false, nil
			}
			_ = req.Reply(ok, payload)
		}
	}
}

// maxAdmitting bounds the channels of one connection and direction that
// wait for admission at once (admit may wait for a slot); more are
// refused at once, so a flood of opens costs no more than that many
// goroutines.
const maxAdmitting = 64

// relayChannels opens each incoming channel on the other side (to returns
// its connection, dialling it if need be) and, once both are open, relays
// them. A refusal is passed back with its reason;
// a channel over admit's cap is refused as a resource shortage. Admission
// runs off the loop: x/crypto's connection reader blocks when the loop
// does not take new channels, which would stall every other channel.
func relayChannels(in <-chan gossh.NewChannel, to func() (gossh.Conn, error), wg *sync.WaitGroup, shortcut func(gossh.NewChannel) bool, admit admitFunc) {
	admitting := make(chan struct{}, maxAdmitting)
	for nc := range in {
		select {
		case admitting <- struct{}{}:
		default:
			_ = nc.Reject(gossh.ResourceShortage, fmt.Sprintf("tl-proxy: too many channels waiting to open on this connection (limit %d)", maxAdmitting))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, refusal := admit()
			<-admitting
			if refusal != "" {
				_ = nc.Reject(gossh.ResourceShortage, refusal)
				return
			}
			defer release()
			if shortcut != nil && shortcut(nc) {
				return
			}
			conn, err := to()
			if err != nil {
				_ = nc.Reject(gossh.ConnectionFailed, refusalText(err))
				return
			}
			out, outReqs, err := conn.OpenChannel(nc.ChannelType(), nc.ExtraData())
			if err != nil {
				var oce *gossh.OpenChannelError
				if errors.As(err, &oce) {
					_ = nc.Reject(oce.Reason, oce.Message)
				} else {
					_ = nc.Reject(gossh.ConnectionFailed, "sandbox connection lost")
				}
				return
			}
			in, inReqs, err := nc.Accept()
			if err != nil {
				out.Close()
				go gossh.DiscardRequests(outReqs)
				return
			}
			relayChannel(in, inReqs, out, outReqs, nc.ChannelType() == "session")
		}()
	}
}

// relayChannel relays one channel pair: opener is the side that opened it,
// target the side it was opened on. For sessions, the target's exit-status
// or exit-signal is passed on after all its output and before its EOF, the
// order OpenSSH clients rely on (RFC 4254 §6.10).
func relayChannel(opener gossh.Channel, openerReqs <-chan *gossh.Request, target gossh.Channel, targetReqs <-chan *gossh.Request, session bool) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); oneWay(opener, target, openerReqs, false) }()
	go func() { defer wg.Done(); oneWay(target, opener, targetReqs, session) }()
	wg.Wait()
}

// relayBuf is the data copy buffer of each channel direction: four SSH
// packets, so a bulk transfer costs fewer reads and wake-ups than one
// packet at a time would.
const relayBuf = 128 << 10

// oneWay moves src's data, stderr and requests to dst; at src's EOF it
// half-closes dst, at src's close it closes dst.
func oneWay(src, dst gossh.Channel, srcReqs <-chan *gossh.Request, orderExit bool) {
	copied := make(chan struct{}) // src's output fully passed on
	exited := make(chan struct{}) // exit reported, or src closed
	srcClosed := make(chan struct{})
	go func() {
		defer close(srcClosed)
		var once sync.Once
		markExit := func() { once.Do(func() { close(exited) }) }
		defer markExit()
		for req := range srcReqs {
			isExit := req.Type == "exit-status" || req.Type == "exit-signal"
			if isExit && orderExit {
				<-copied
			}
			ok, err := dst.SendRequest(req.Type, req.WantReply, req.Payload)
			if req.WantReply {
				_ = req.Reply(ok && err == nil, nil)
			}
			if isExit {
				markExit()
			}
		}
	}()
	var cw sync.WaitGroup
	cw.Add(1)
	go func() { defer cw.Done(); _, _ = io.Copy(dst.Stderr(), src.Stderr()) }()
	_, _ = io.CopyBuffer(dst, src, make([]byte, relayBuf))
	cw.Wait()
	close(copied)
	if orderExit {
		<-exited
	}
	_ = dst.CloseWrite()
	<-srcClosed
	_ = dst.Close()
}
