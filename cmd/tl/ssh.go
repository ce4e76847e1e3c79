package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// The PTY WebSocket's opcodes (spec: PTY sessions).
const (
	opData   = 0x00
	opResize = 0x01
	opReady  = 0x02
	opExit   = 0x03
)

const (
	// maxPTYMessage bounds one message from the agent (it sends at most
	// 32 KiB of output per message).
	maxPTYMessage = 1 << 20
	// inputBuf is one read of the local terminal, one data message.
	inputBuf = 32 << 10
	// setupTimeout bounds creating a session and opening its WebSocket.
	setupTimeout = 30 * time.Second
)

func runSSH(cfg config, args []string) error {
	fs := newFlags("ssh", &cfg)
	shell := fs.String("shell", "/bin/bash", "the program the terminal runs")
	env := envFlag{}
	fs.Var(env, "env", "KEY=VALUE added to the shell's environment (repeatable)")
	detach := fs.String("detach-key", "ctrl-]", "the key that detaches, leaving the shell running (none: no key)")
	pos, _, err := parseArgs(fs, args, 0)
	if err != nil {
		return err
	}
	if err := wantArgs("ssh", pos, 1, 1); err != nil {
		return err
	}
	key, err := parseDetachKey(*detach)
	if err != nil {
		return err
	}
	lt, ok := stdinTerm()
	if !ok {
		return usageErrorf("ssh requires an interactive terminal")
	}
	t, err := cfg.sandbox(pos[0])
	if err != nil {
		return err
	}
	cols, rows := lt.size()
	// The local TERM, so programs in the sandbox draw for this terminal.
	e := map[string]string{"TERM": os.Getenv("TERM")}
	if e["TERM"] == "" {
		e["TERM"] = "xterm-256color"
	}
	if ct := os.Getenv("COLORTERM"); ct != "" {
		e["COLORTERM"] = ct
	}
	for k, v := range env {
		e[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	var created struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
	}
	body := map[string]any{"command": *shell, "rows": rows, "cols": cols, "env": e}
	if err := t.postJSON(ctx, "/api/v1/pty", body, &created, "create PTY session"); err != nil {
		return err
	}
	if !idRE.MatchString(created.SessionID) || created.Token == "" {
		return fmt.Errorf("failed to create PTY session: the answer has no valid session_id and token")
	}
	s := savedSession{ID: created.SessionID, Token: created.Token, Sandbox: t.sandbox,
		ProxyURL: cfg.proxy(), Created: time.Now().UnixMilli()}
	if err := s.save(); err != nil {
		fmt.Fprintf(os.Stderr, "tl: cannot save the session, so tl sbx attach will not find it: %v\n", err)
	}
	return attach(t, lt, s, key)
}

func runAttach(cfg config, args []string) error {
	fs := newFlags("attach", &cfg)
	detach := fs.String("detach-key", "ctrl-]", "the key that detaches again (none: no key)")
	pos, _, err := parseArgs(fs, args, 0)
	if err != nil {
		return err
	}
	if err := wantArgs("attach", pos, 0, 1); err != nil {
		return err
	}
	if len(pos) == 0 {
		return listSessions()
	}
	key, err := parseDetachKey(*detach)
	if err != nil {
		return err
	}
	s, err := loadSession(pos[0])
	if err != nil {
		return err
	}
	lt, ok := stdinTerm()
	if !ok {
		return usageErrorf("attach requires an interactive terminal")
	}
	if cfg.proxyURL == "" { // no flag or variable: the proxy the session was made on
		cfg.proxyURL = s.ProxyURL
	}
	t, err := cfg.sandbox(s.Sandbox)
	if err != nil {
		return err
	}
	return attach(t, lt, s, key)
}

// attach runs the local terminal against session s until the shell exits
// (its code becomes the CLI's), the user detaches, a signal ends the CLI or
// the connection is lost. The terminal is restored on every one of these.
func attach(t *target, lt *localTerm, s savedSession, detachKey int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, setupTimeout)
	path := "/api/v1/pty/" + s.ID + "/ws?token=" + url.QueryEscape(s.Token)
	conn, err := t.dialWS(dctx, path, http.Header{"X-PTY-Token": {s.Token}}, "attach to PTY session "+s.ID)
	dcancel()
	if err != nil {
		var he *httpStatusError
		if errors.As(err, &he) && (he.Status == http.StatusNotFound || he.Status == http.StatusForbidden) {
			forgetSession(s.ID) // ended, or not this token's: attach cannot ever work
		}
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxPTYMessage)

	// Signals are caught before raw mode, so none can end the CLI with the
	// terminal left raw.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := lt.raw(); err != nil {
		return err
	}
	defer lt.Restore()
	if detachKey != noDetach {
		fmt.Fprintf(os.Stderr, "tl: session %s in sandbox %s; %s detaches\r\n", s.ID, s.Sandbox, detachKeyName(detachKey))
	}
	if err := conn.Write(ctx, websocket.MessageBinary, []byte{opReady}); err != nil {
		return lostError(s, err)
	}
	// The window may have changed since the session was made or last seen.
	_ = sendResize(ctx, conn, lt)

	ended := make(chan ptyEnd, 1)
	go func() { ended <- readPTY(ctx, conn) }()
	input := make(chan inputEnd, 1)
	go func() { input <- pumpInput(ctx, conn, detachKey) }()
	for {
		select {
		case e := <-ended:
			lt.Restore()
			return e.result(s)
		case why := <-input:
			if why == inputWriteFailed {
				continue // the reader reports the broken connection
			}
			_ = conn.Close(websocket.StatusNormalClosure, "detach")
			lt.Restore()
			fmt.Fprintf(os.Stderr, "\ntl: detached from session %s in sandbox %s; reattach with: tl sbx attach %s\n", s.ID, s.Sandbox, s.ID)
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGWINCH {
				_ = sendResize(ctx, conn, lt)
				continue
			}
			_ = conn.Close(websocket.StatusNormalClosure, "client ended")
			lt.Restore()
			n := int(sig.(syscall.Signal))
			return exitCode{128 + n, fmt.Sprintf("ended by %v; session %s keeps running: tl sbx attach %s", sig, s.ID, s.ID)}
		}
	}
}

func sendResize(ctx context.Context, conn *websocket.Conn, lt *localTerm) error {
	cols, rows := lt.size()
	msg := []byte{opResize, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(msg[1:], uint16(min(cols, 0xffff)))
	binary.BigEndian.PutUint16(msg[3:], uint16(min(rows, 0xffff)))
	return conn.Write(ctx, websocket.MessageBinary, msg)
}

type inputEnd int

const (
	inputDetach      inputEnd = iota // the detach key
	inputEOF                         // the terminal is gone: detach too
	inputWriteFailed                 // the connection broke
)

// pumpInput sends the terminal's bytes as data messages until the detach
// key, the end of input or a failed write.
func pumpInput(ctx context.Context, conn *websocket.Conn, detachKey int) inputEnd {
	buf := make([]byte, 1+inputBuf)
	buf[0] = opData
	for {
		n, err := os.Stdin.Read(buf[1:])
		data, detach := buf[1:1+n], false
		if detachKey != noDetach {
			for i, b := range data {
				if int(b) == detachKey {
					data, detach = data[:i], true
					break
				}
			}
		}
		if len(data) > 0 {
			if conn.Write(ctx, websocket.MessageBinary, buf[:1+len(data)]) != nil {
				return inputWriteFailed
			}
		}
		switch {
		case detach:
			return inputDetach
		case err != nil:
			return inputEOF
		}
	}
}

// ptyEnd is how the session's output stream ended.
type ptyEnd struct {
	code   int
	exited bool  // the shell exited with code
	err    error // otherwise: terminated, or the connection broke
}

// readPTY copies output to stdout until the exit frame (or the close
// reason exit:<code> that follows it) or an error.
func readPTY(ctx context.Context, conn *websocket.Conn) ptyEnd {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				if c, ok := strings.CutPrefix(ce.Reason, "exit:"); ok {
					if code, err := strconv.Atoi(c); err == nil {
						return ptyEnd{code: code, exited: true}
					}
				}
				if ce.Reason == "session terminated" {
					return ptyEnd{err: errTerminated}
				}
			}
			return ptyEnd{err: err}
		}
		if typ != websocket.MessageBinary || len(data) == 0 {
			continue
		}
		switch data[0] {
		case opData:
			if _, err := os.Stdout.Write(data[1:]); err != nil {
				return ptyEnd{err: fmt.Errorf("write to the terminal: %v", err)}
			}
		case opExit:
			if len(data) >= 5 {
				return ptyEnd{code: int(int32(binary.BigEndian.Uint32(data[1:5]))), exited: true}
			}
		}
	}
}

var errTerminated = errors.New("PTY session terminated")

func (e ptyEnd) result(s savedSession) error {
	switch {
	case e.exited:
		forgetSession(s.ID)
		if e.code == 0 {
			return nil
		}
		if e.code < 0 || e.code > 255 {
			return exitCode{1, fmt.Sprintf("the shell ended with code %d", e.code)}
		}
		return exitCode{code: e.code}
	case errors.Is(e.err, errTerminated):
		forgetSession(s.ID)
		return e.err
	default:
		return lostError(s, e.err)
	}
}

func lostError(s savedSession, err error) error {
	return fmt.Errorf("connection to session %s lost (%v); reattach with: tl sbx attach %s", s.ID, err, s.ID)
}
