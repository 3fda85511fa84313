package punch

import (
	"bytes"
	"strings"
	"testing"
)

// The IPv6 verdict and the human report follow what the probe found: not
// tested, no answer, a global address, or one behind a translator.
func TestProbeIPv6Verdict(t *testing.T) {
	yes, no := true, false
	f := EndpointIndependent
	for _, c := range []struct {
		r    ProbeReport
		want string
	}{
		{ProbeReport{UDP: true}, "not tested"},
		{ProbeReport{UDP: true, IPv6: &no}, "no:"},
		{ProbeReport{UDP: true, IPv6: &yes, IPv6Reflexive: "[2001:2:1::10]:4000", IPv6Global: true, IPv6Filtering: &f}, "yes: a global address"},
		{ProbeReport{UDP: true, IPv6: &yes, IPv6Reflexive: "[2001:2::21]:4000"}, "yes, through a NAT66"},
	} {
		c.r.Verdict = verdict(c.r)
		if !strings.HasPrefix(c.r.Verdict.IPv6, c.want) {
			t.Errorf("%+v: verdict %q, want it to begin %q", c.r, c.r.Verdict.IPv6, c.want)
		}
		var b bytes.Buffer
		c.r.WriteHuman(&b)
		if !strings.Contains(b.String(), "Over IPv6:\n  "+c.r.Verdict.IPv6) || (c.r.IPv6Reflexive != "") != strings.Contains(b.String(), c.r.IPv6Reflexive+" (global:") {
			t.Errorf("the report does not show the IPv6 findings:\n%s", b.String())
		}
	}
}

// A lifetime measurement in which nothing expired is reported as a lower
// bound, never as the NAT's lifetime.
func TestProbeLifetimeAtLeastIsABound(t *testing.T) {
	secs := 120.0
	r := ProbeReport{UDP: true, LifetimeSec: &secs, LifetimeAtLeast: true}
	r.Verdict = verdict(r)
	var b bytes.Buffer
	r.WriteHuman(&b)
	if !strings.Contains(b.String(), "at least 120 s idle") || !strings.Contains(r.Verdict.Keepalive, "at least 120 s") {
		t.Fatalf("a bound reported as the lifetime:\n%s", b.String())
	}
	r.LifetimeAtLeast = false
	r.Verdict = verdict(r)
	b.Reset()
	r.WriteHuman(&b)
	if strings.Contains(b.String(), "at least") || strings.Contains(r.Verdict.Keepalive, "at least") {
		t.Fatalf("a measured lifetime reported as a bound:\n%s", b.String())
	}
}

// A NAT that forgot within the shortest idle time tried is reported as
// "under" that time, never as a lifetime of that time or of zero.
func TestProbeLifetimeUnderIsABound(t *testing.T) {
	secs := 5.0
	r := ProbeReport{UDP: true, LifetimeSec: &secs, LifetimeUnder: true}
	r.Verdict = verdict(r)
	var b bytes.Buffer
	r.WriteHuman(&b)
	if !strings.Contains(b.String(), "mapping lifetime        under 5 s idle") || !strings.Contains(r.Verdict.Keepalive, "within 5 s") {
		t.Fatalf("an upper bound reported as the lifetime:\n%s", b.String())
	}
}
