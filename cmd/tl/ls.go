package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// proxySandbox is one entry of the proxy's GET /_proxy/sandboxes (the
// shape of proxy.SandboxState, which this client does not import).
type proxySandbox struct {
	ID           string `json:"id"`
	Connected    bool   `json:"connected"`
	Since        int64  `json:"connected_since"` // Unix ms
	Remote       string `json:"remote"`
	AgentVersion string `json:"agent_version"`
}

func runLs(cfg config, args []string) error {
	fs := newFlags("ls", &cfg)
	asJSON := fs.Bool("json", false, "print the proxy's answer as JSON")
	pos, _, err := parseArgs(fs, args, 0)
	if err != nil {
		return err
	}
	if err := wantArgs("ls", pos, 0, 0); err != nil {
		return err
	}
	t, _, err := cfg.proxyTarget() // the proxy's own route: no sandbox
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	req, err := t.request(ctx, http.MethodGet, "/_proxy/sandboxes", nil)
	if err != nil {
		return err
	}
	resp, err := t.do(req, "list sandboxes")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Sandboxes []proxySandbox `json:"sandboxes"`
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err == nil {
		err = json.Unmarshal(data, &out)
	}
	if err != nil {
		return fmt.Errorf("failed to list sandboxes: bad answer: %v", err)
	}
	if *asJSON {
		_, err := os.Stdout.Write(append(data, '\n'))
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SANDBOX\tSTATUS\tSINCE\tAGENT\tREMOTE")
	for _, s := range out.Sandboxes {
		status, since := "disconnected", "-"
		if s.Connected {
			status = "connected"
			since = time.UnixMilli(s.Since).Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.ID, status, since, dash(s.AgentVersion), dash(s.Remote))
	}
	return w.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
