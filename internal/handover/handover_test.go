package handover

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type section struct {
	Name string `json:"name"`
	In   Ref    `json:"in"`
}

func TestRoundTrip(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wr := NewWriter("v1")
	ref, err := wr.File("pipe", r)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := wr.File("pipe", r); again != ref {
		t.Fatalf("the same fd recorded twice: refs %d and %d", ref, again)
	}
	wr.Pid(42)
	wr.Pid(42)
	if err := wr.Put("demo", section{Name: "x", In: ref}); err != nil {
		t.Fatal(err)
	}
	if err := wr.Put("demo", 1); err == nil {
		t.Fatal("a section written twice was taken")
	}
	mf, err := wr.Seal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mf.Write([]byte("x")); err == nil {
		t.Fatal("the sealed memfd took a write")
	}
	if err := wr.Inherit(); err != nil {
		t.Fatal(err)
	}
	if flags, _ := unix.FcntlInt(r.Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC != 0 {
		t.Fatal("Inherit left close-on-exec set")
	}
	fd, err := unix.Dup(int(mf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	mf.Close()
	rd, err := Open(fd, false) // at the offset Seal left: the end

	if err != nil {
		t.Fatal(err)
	}
	if rd.From() != "v1" || len(rd.Pids()) != 1 || rd.Pids()[0] != 42 {
		t.Fatalf("state read back as from %q pids %v", rd.From(), rd.Pids())
	}
	var got section
	if ok, err := rd.Section("demo", &got); !ok || err != nil || got.Name != "x" {
		t.Fatalf("section: %v %v %+v", ok, err, got)
	}
	if ok, _ := rd.Section("absent", &got); ok {
		t.Fatal("an absent section was found")
	}
	f, err := rd.File(got.In)
	if err != nil || f == nil {
		t.Fatalf("File: %v", err)
	}
	if _, err := rd.File(got.In); err == nil {
		t.Fatal("a file was taken twice")
	}
	if _, err := rd.File(7); err == nil {
		t.Fatal("a reference out of range was taken")
	}
	if len(rd.Unclaimed()) != 0 {
		t.Fatal("a claimed file is listed unclaimed")
	}
}

func TestFileIdentityChecked(t *testing.T) {
	r, w, _ := os.Pipe()
	defer w.Close()
	wr := NewWriter("v1")
	ref, _ := wr.File("pipe", r)
	b, _ := wr.Encode()
	// The number now names another file: the old one was closed and the
	// number reused.
	fd := int(r.Fd())
	r.Close()
	other, _ := os.Open("/dev/null")
	defer other.Close()
	if int(other.Fd()) != fd {
		if err := unix.Dup2(int(other.Fd()), fd); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
	}
	rd, err := Decode(b, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rd.File(ref); err == nil || !strings.Contains(err.Error(), "is not pipe") {
		t.Fatalf("a reused fd number was taken: %v", err)
	}
	dry, _ := Decode(b, true)
	if f, err := dry.File(ref); f != nil || err != nil {
		t.Fatalf("dry run File = %v, %v; want nil, nil", f, err)
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, b := range []string{``, `{`, `{"format":2}`, `{"format":1,"files":[{"fd":-1}]}`} {
		if _, err := Decode([]byte(b), false); err == nil {
			t.Errorf("Decode(%q) took it", b)
		}
	}
	os.Setenv(EnvFD, "nope")
	if _, err := FromEnv(); err == nil {
		t.Error("a bad fd in the environment was taken")
	}
	if _, ok := os.LookupEnv(EnvFD); ok {
		t.Error("FromEnv left the variable set")
	}
}
