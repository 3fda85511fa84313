package rendezvous

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/gitchat/gcn-punch/wire"
)

// Every counter `status --stats` prints is served as a Prometheus counter
// with its value, each announced by its TYPE line; the gauges count what
// the rendezvous holds.
func TestMetricsServeEveryCounter(t *testing.T) {
	s, _ := testServer(t, true)
	c := newTestClient(s)
	s.handle(0, 0, 0, c.keepalive(t, wire.Sub{RepoID: "chat.git"}), srcA)
	s.handle(0, 0, 0, []byte("gcn-garbage"), srcB) // one malformed

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.serveMetrics(ctx, ln); close(done) }()
	defer func() { cancel(); <-done }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}
	text := string(body)

	var stats map[string]uint64
	b, _ := json.Marshal(s.Stats())
	json.Unmarshal(b, &stats)
	if len(stats) < 30 {
		t.Fatalf("only %d counters in Stats", len(stats))
	}
	for key := range stats {
		if key == "subscriptions_behind" || key == "last_ack_unix_nano" {
			continue // a gauge, and a time: not counters
		}
		name := metricsPrefix + key + "_total"
		if !strings.Contains(text, "# TYPE "+name+" counter\n"+name+" ") {
			t.Errorf("counter %s missing", name)
		}
	}
	for _, want := range []string{
		"gcn_punch_rendezvous_keepalives_total 1\n",
		"gcn_punch_rendezvous_malformed_total 1\n",
		"gcn_punch_rendezvous_clients 1\n",
		"gcn_punch_rendezvous_repositories 1\n",
		"# TYPE gcn_punch_rendezvous_subscriptions_behind gauge\ngcn_punch_rendezvous_subscriptions_behind 0\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if f := strings.Fields(line); !strings.HasPrefix(line, "# ") && len(f) != 2 {
			t.Errorf("not a sample line: %q", line)
		}
	}
}
