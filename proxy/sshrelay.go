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
// closes both and returns when every relay goroutine has finished.
// shortcut, when set, may take a user's channel itself (and return true)
// instead of relaying it to the agent. userAdmit and agentAdmit count the
// channels each side opens.
func bridge(user, agent sshEnd, shortcut func(gossh.NewChannel) bool, userAdmit, agentAdmit admitFunc) {
	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	run(func() { relayGlobal(user.reqs, agent.conn) })
	run(func() { relayGlobal(agent.reqs, user.conn) })
	run(func() { relayChannels(user.chans, agent.conn, &wg, shortcut, userAdmit) })
	run(func() { relayChannels(agent.chans, user.conn, &wg, nil, agentAdmit) })
	run(func() { _ = user.conn.Wait(); agent.conn.Close() })
	run(func() { _ = agent.conn.Wait(); user.conn.Close() })
	wg.Wait()
}

func relayGlobal(in <-chan *gossh.Request, to gossh.Conn) {
	for req := range in {
		ok, payload, err := to.SendRequest(req.Type, req.WantReply, req.Payload)
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

// relayChannels opens each incoming channel on the other side and, once
// both are open, relays them. A refusal is passed back with its reason;
// a channel over admit's cap is refused as a resource shortage. Admission
// runs off the loop: x/crypto's connection reader blocks when the loop
// does not take new channels, which would stall every other channel.
func relayChannels(in <-chan gossh.NewChannel, to gossh.Conn, wg *sync.WaitGroup, shortcut func(gossh.NewChannel) bool, admit admitFunc) {
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
			out, outReqs, err := to.OpenChannel(nc.ChannelType(), nc.ExtraData())
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
