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

// A lifetime measurement is reported as what it is: a lower bound when
// nothing expired, an upper bound when even the shortest idle time was too
// long, and the NAT's lifetime otherwise; never one as another.
func TestProbeLifetimeBounds(t *testing.T) {
	secs := 120.0
	for _, c := range []struct {
		atLeast, under bool
		line, verdict  string
	}{
		{true, false, "mapping lifetime        at least 120 s idle", "at least 120 s"},
		{false, true, "mapping lifetime        under 120 s idle", "within 120 s"},
		{false, false, "mapping lifetime        120 s idle", "kept an idle mapping 120 s"},
	} {
		r := ProbeReport{UDP: true, LifetimeSec: &secs, LifetimeAtLeast: c.atLeast, LifetimeUnder: c.under}
		r.Verdict = verdict(r)
		var b bytes.Buffer
		r.WriteHuman(&b)
		if !strings.Contains(b.String(), c.line) || !strings.Contains(r.Verdict.Keepalive, c.verdict) {
			t.Errorf("at least %v, under %v: want %q and a verdict with %q:\n%s", c.atLeast, c.under, c.line, c.verdict, b.String())
		}
	}
}
