package supervisor

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// The rule that keeps FIFREEZE off any file system the host shares.
func TestCheckFreezable(t *testing.T) {
	const ext4, overlay, tmpfs = 0xEF53, 0x794c7630, 0x01021994
	loop := unix.Mkdev(7, 3)
	vda := unix.Mkdev(253, 0)
	mounts := "" +
		"20 1 0:40 / / rw - overlay overlay rw\n" +
		"30 20 7:3 / /data rw - ext4 /dev/loop3 rw\n" +
		"31 20 253:0 /tmp/tl-bin/tl-agent /usr/local/bin/tl-agent rw - ext4 /dev/vda rw\n" +
		"32 20 0:41 / /tmp rw - tmpfs tmp rw\n"
	for _, c := range []struct {
		name    string
		path    string
		fsType  int64
		dev     uint64
		guarded []uint64
		mi      string
		ok      bool
	}{
		{"a whole ext4 mounted at the path", "/data", ext4, loop, []uint64{vda}, mounts, true},
		{"the overlay root", "/", overlay, unix.Mkdev(0, 40), []uint64{vda}, mounts, false},
		{"tmpfs", "/tmp", tmpfs, unix.Mkdev(0, 41), []uint64{vda}, mounts, false},
		{"not a mount point", "/data/sub", ext4, loop, []uint64{vda}, mounts, false},
		{"the host's disk seen through a bind", "/usr/local/bin", ext4, vda, nil, mounts, false},
		{"the agent binary's or root's file system outside a VM", "/data", ext4, loop, []uint64{loop}, mounts, false},
		{"a subtree of it bound elsewhere", "/data", ext4, loop, []uint64{vda}, mounts + "33 20 7:3 /sub /elsewhere rw - ext4 /dev/loop3 rw\n", false},
	} {
		err := checkFreezable(c.path, c.fsType, c.dev, c.guarded, c.mi)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrNotFreezable)) {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

// This machine's own root is never freezable from a test binary: it is
// no VM's init, and / holds the test binary.
func TestFreezeCheckRefusesThisMachinesRoot(t *testing.T) {
	err := FreezeCheck("/")
	if err == nil {
		t.Fatal("FreezeCheck allows freezing this machine's root")
	}
	t.Log(err)
}
