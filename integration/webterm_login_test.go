package integration

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// loginClient posts the login form from local address src (any 127/8
// address is loopback on Linux, so one machine has many sources) and
// never follows the redirect.
func loginClient(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	return &http.Client{
		Transport:     &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// postLogin sends the browser login form with key from c, as the proxy's
// own page does (Origin of the host), and returns the answer and body.
func postLogin(t *testing.T, s *System, c *http.Client, key string) (*http.Response, string) {
	t.Helper()
	return postLoginAccept(t, s, c, key, "")
}

// postLoginAccept is postLogin with an Accept header (a browser's: the
// page, not JSON, on a refusal).
func postLoginAccept(t *testing.T, s *System, c *http.Client, key, accept string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.BaseURL()+"/_proxy/login", strings.NewReader(url.Values{"key": {key}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.BaseURL())
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// TestBrowserLoginRateLimit: an unauthenticated flood of wrong keys at the
// browser login from one source is refused (429, Retry-After, the spec's
// error) after the bound of 10 failures, before any key is compared, and
// logged once, not per attempt; a good login from another source is
// untouched. Without the bound every guess is answered (and logged).
func TestBrowserLoginRateLimit(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	attacker, victim := loginClient("127.0.0.1"), loginClient("127.0.0.2")
	failed, refused := 0, 0
	var last *http.Response
	var lastBody string
	for i := 0; i < 40 && refused < 20; i++ {
		resp, body := postLogin(t, s, attacker, "tl_guess_"+randHex(16))
		switch resp.StatusCode {
		case http.StatusSeeOther:
			if refused > 0 {
				t.Fatalf("attempt %d answered again after a refusal: %s", i+1, resp.Header.Get("Location"))
			}
			failed++
		case http.StatusTooManyRequests:
			refused++
			last, lastBody = resp, body
		default:
			t.Fatalf("attempt %d: status %d: %s", i+1, resp.StatusCode, body)
		}
	}
	if refused == 0 || failed != 10 {
		t.Fatalf("%d wrong keys answered and %d refused; want 10 answered, then 429", failed, refused)
	}
	var e struct{ Error, Code string }
	if err := json.Unmarshal([]byte(lastBody), &e); err != nil || e.Code != "TOO_MANY_FAILED_LOGINS" || e.Error == "" {
		t.Fatalf("429 body %q: want the spec's error with code TOO_MANY_FAILED_LOGINS", lastBody)
	}
	if ra := last.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("429 without a Retry-After (%q)", ra)
	}
	resp, body := postLogin(t, s, victim, s.APIKey)
	if resp.StatusCode != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Set-Cookie"), "tl_proxy_session=") {
		t.Fatalf("good login from another source during the flood: %d %q: %s", resp.StatusCode, resp.Header.Get("Set-Cookie"), body)
	}
	if resp, _ := postLogin(t, s, attacker, s.APIKey); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the flooding source's own login: %d, want 429 (the key is not even compared)", resp.StatusCode)
	}
	// A browser's own form post (Accept: text/html) gets the login page
	// again with the reason, not the JSON error.
	resp, body = postLoginAccept(t, s, attacker, "tl_guess_"+randHex(16), "text/html,application/xhtml+xml,*/*;q=0.8")
	if resp.StatusCode != http.StatusTooManyRequests || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(body, "Too many failed logins from this address") || !strings.Contains(body, `action="/_proxy/login"`) ||
		resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("a browser's refused login: %d %q %q:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Retry-After"), body)
	}
	log := s.ProxyLog()
	if n := strings.Count(log, "too many failed attempts"); n != 1 {
		t.Fatalf("%d refusal log lines for %d refusals from one source, want 1:\n%s", n, refused+1, tail(log, 30))
	}
	if n := strings.Count(log, "browser login refused"); n != 10 {
		t.Fatalf("%d failed-login log lines, want one per answered failure (10)", n)
	}
}
