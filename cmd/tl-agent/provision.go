package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tensorlake/tl-agent/agent"
	"github.com/tensorlake/tl-agent/internal/logx"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
)

// provisionCmd does the agent's start-up provisioning and nothing else: for
// an image build (RUN tl-agent provision bakes tl-user into a layer, so the
// sandbox starts with nothing to write) or to check an image's /etc from
// outside (--root). It also checks the image's boot service files
// (services.Dir under the root): each invalid one is named with the
// reason, so a bad file fails the image build rather than being skipped
// at every boot. It prints what it did as JSON; exit 1 on any failure.
func provisionCmd(args []string) int {
	d := agent.Defaults()
	fs := flag.NewFlagSet("tl-agent provision", flag.ContinueOnError)
	root := fs.String("root", "/", "root `folder` of the image to provision; the kernel host name is set only for /")
	o := supervisor.ProvisionOptions{}
	fs.StringVar(&o.User, "user", d.User, "sandbox user `name`")
	fs.IntVar(&o.UID, "uid", d.UID, "uid of the user when it is created")
	fs.IntVar(&o.GID, "gid", d.GID, "gid of the user's group when it is created")
	fs.StringVar(&o.Hostname, "hostname", d.Hostname, "host `name` (empty: leave it)")
	level := fs.String("log-level", "info", "`level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := logx.New(os.Stderr, *level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-agent provision:", err)
		return 2
	}
	res, err := supervisor.Provision(*root, o, log)
	out, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(out))
	code := 0
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-agent provision:", err)
		code = 1
	}
	if _, errs := services.Load(filepath.Join(*root, services.Dir)); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, "tl-agent provision: boot service:", e)
		}
		code = 1
	}
	return code
}
