package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"time"
)

// metricsPrefix names every metric the rendezvous serves.
const metricsPrefix = "gcn_punch_rendezvous_"

// WriteMetrics writes the counters (Stats, each as NAME_total) and a few
// gauges in the Prometheus text exposition format, version 0.0.4.
func (s *Server) WriteMetrics(w io.Writer) error {
	st := s.Stats()
	var b strings.Builder
	eachCounter(reflect.ValueOf(st), func(name string, v uint64) {
		fmt.Fprintf(&b, "# TYPE %s%s_total counter\n%s%s_total %d\n", metricsPrefix, name, metricsPrefix, name, v)
	})
	s.mu.Lock()
	clients, repos, members := len(s.clients), len(s.repos), 0
	for _, r := range s.repos {
		if r.tree != nil {
			members += r.tree.size
		}
	}
	s.mu.Unlock()
	for _, g := range []struct {
		name, help string
		v          int
	}{
		{"clients", "clients the rendezvous holds in memory", clients},
		{"repositories", "repositories with followers or events in memory", repos},
		{"tree_members", "subscriptions placed in peer-to-peer trees", members},
		{"subscriptions_behind", "subscriptions whose client has not acked its repository's head", st.SubscriptionsBehind},
	} {
		fmt.Fprintf(&b, "# HELP %s%s %s\n# TYPE %s%s gauge\n%s%s %d\n", metricsPrefix, g.name, g.help, metricsPrefix, g.name, metricsPrefix, g.name, g.v)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// eachCounter calls fn with every uint64 field of a Stats value (embedded
// structs flattened) by its JSON key, the name `status --stats` prints.
func eachCounter(v reflect.Value, fn func(name string, v uint64)) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		switch {
		case f.Anonymous && f.Type.Kind() == reflect.Struct:
			eachCounter(v.Field(i), fn)
		case f.Type.Kind() == reflect.Uint64 && f.IsExported():
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fn(name, v.Field(i).Uint())
		}
	}
}

// metricsReadTimeout bounds a scrape's request: a scraper sends a few
// hundred bytes at once, and a stalled one must not hold a connection.
const metricsReadTimeout = 5 * time.Second

// serveMetrics serves /metrics on ln until ctx is done.
func (s *Server) serveMetrics(ctx context.Context, ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		s.WriteMetrics(w)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: metricsReadTimeout, ReadTimeout: metricsReadTimeout}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("metrics server stopped", "err", err)
	}
}
