package sshd

import (
	"errors"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Session channels that ask for no program are capped per connection and
// closed at their deadline; all channels together are capped too, and a
// started session frees its unstarted slot.
func TestChannelLimits(t *testing.T) {
	c := dialWith(t, Config{MaxChannelsPerConn: 6, MaxUnstartedPerConn: 3, UnstartedTimeout: 300 * time.Millisecond})
	open := func() (gossh.Channel, error) {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err == nil {
			go gossh.DiscardRequests(reqs)
		}
		return ch, err
	}
	var idle []gossh.Channel
	for i := 0; i < 3; i++ {
		ch, err := open()
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		idle = append(idle, ch)
	}
	var oce *gossh.OpenChannelError
	if _, err := open(); !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("4th unstarted session: %v, want refused", err)
	}
	// Each idle channel is closed by the server at its deadline.
	for i, ch := range idle {
		done := make(chan error, 1)
		go func() { _, err := ch.Read(make([]byte, 1)); done <- err }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("idle session %d not closed", i)
		}
	}
	// Started sessions do not count as unstarted, but count as channels.
	var live []*gossh.Session
	for i := 0; i < 6; i++ {
		// The server frees a closed channel's slot just after closing it.
		sess, err := c.NewSession()
		for try := 0; err != nil && try < 100; try++ {
			time.Sleep(20 * time.Millisecond)
			sess, err = c.NewSession()
		}
		if err != nil {
			t.Fatalf("session %d after the idle ones closed: %v", i, err)
		}
		if err := sess.Start("sleep 30"); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		live = append(live, sess)
	}
	if _, err := open(); !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("7th channel: %v, want refused", err)
	}
	for _, sess := range live {
		_ = sess.Signal(gossh.SIGKILL)
		sess.Close()
	}
}
