// Package natstest runs NATS servers with JetStream inside a test process, on loopback.
package natstest

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyWithin bounds a server's start: one is up in about 30 ms here.
const readyWithin = 10 * time.Second

// FreePort is a loopback TCP port free a moment ago, for a server that must
// come back on the same port after a stop.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs a JetStream server on 127.0.0.1:port (0: any) that keeps its
// data in dir, and stops it when the test ends. Stop it earlier with
// Shutdown; start it again on the same port and dir to bring its data back.
func Start(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(readyWithin) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// URL is a server's client URL.
func URL(s *server.Server) string { return s.ClientURL() }

// StartCluster runs n JetStream servers routed to each other as one
// cluster on loopback, with their data under dir, and stops them when the
// test ends. It returns once each takes connections; the JetStream meta
// leader is elected a few seconds later.
func StartCluster(t testing.TB, dir string, n int) []*server.Server {
	t.Helper()
	routes := make([]string, n)
	ports := make([]int, n)
	for i := range n {
		ports[i] = FreePort(t)
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
	}
	servers := make([]*server.Server, n)
	for i := range n {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1)), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(s.Shutdown)
		servers[i] = s
	}
	for _, s := range servers {
		if !s.ReadyForConnections(readyWithin) {
			t.Fatal("NATS server not ready")
		}
	}
	return servers
}

// URLs is the client URLs of servers, comma-separated.
func URLs(servers []*server.Server) string {
	var u []string
	for _, s := range servers {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}
