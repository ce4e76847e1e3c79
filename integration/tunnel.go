package integration

import (
	"context"
	"net/http"

	"github.com/coder/websocket"
)

// DialTunnel opens a TCP tunnel WebSocket to port inside the sandbox
// through the proxy. The answer is the HTTP response when refused.
func (s *System) DialTunnel(ctx context.Context, port string) (*websocket.Conn, *http.Response, error) {
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+s.APIKey)
	c, resp, err := websocket.Dial(ctx, s.WSURL()+"/api/v1/tunnels/tcp?port="+port, &websocket.DialOptions{
		HTTPHeader: hdr, Host: s.SandboxID + ".local",
	})
	if err == nil {
		c.SetReadLimit(-1)
	}
	return c, resp, err
}
