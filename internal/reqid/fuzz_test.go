package reqid

import (
	"net/http"
	"testing"
)

// FuzzFromHeaders: whatever a client sends, the ids are valid and bounded,
// a traceparent that parses round-trips its trace-id, and nothing panics.
func FuzzFromHeaders(f *testing.F) {
	f.Add(goodTP, "client-1")
	f.Add("ff-"+goodTrace+"-"+goodParent+"-01", "")
	f.Add("cc-"+goodTrace+"-"+goodParent+"-01-x", "a b")
	f.Add("", "\x00")
	f.Fuzz(func(t *testing.T, tp, rid string) {
		h := http.Header{}
		h.Set(HeaderTraceparent, tp)
		h.Set(HeaderRequestID, rid)
		id := FromHeaders(h)
		if !id.Valid() {
			t.Fatalf("invalid ids %+v from %q %q", id, tp, rid)
		}
		if trace, _, _, err := ParseTraceparent(tp); err == nil && trace != id.Trace {
			t.Fatalf("valid traceparent %q: trace %q not kept (%q)", tp, trace, id.Trace)
		}
		if ValidRequestID(rid) && id.Request != rid {
			t.Fatalf("sane request id %q replaced by %q", rid, id.Request)
		}
		if _, _, _, err := ParseTraceparent(id.Traceparent()); err != nil {
			t.Fatalf("our traceparent %q does not parse: %v", id.Traceparent(), err)
		}
	})
}
