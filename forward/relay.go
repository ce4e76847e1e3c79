// Package forward reaches targets inside the sandbox: the dialers of uplink
// tcp:/unix: streams, WebSocket tunnels and SSH forwards. The byte relay
// they all use is internal/relay (the proxy shares it).
package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// DialTimeout bounds connecting to a target inside the sandbox.
const DialTimeout = 5 * time.Second

// ErrUnreachable wraps a failed dial to a sandbox target.
var ErrUnreachable = errors.New("target unreachable")

// DialTCP connects to 127.0.0.1:port inside the sandbox.
func DialTCP(ctx context.Context, port int) (net.Conn, error) {
	d := net.Dialer{Timeout: DialTimeout}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if err != nil {
		return nil, fmt.Errorf("%w: port %d: %v", ErrUnreachable, port, err)
	}
	return c, nil
}
