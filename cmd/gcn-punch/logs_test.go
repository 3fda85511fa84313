package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The terminal format is one short line: time, level, message, then the
// attributes (those given by With first, groups flattened, values with
// spaces quoted); debug lines only with --verbose.
func TestHumanLogLines(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(newHumanHandler(&b, slog.LevelInfo)).With("client", "ab12")
	log.WithGroup("peer").Info("path formed", "kind", "srflx", "note", "two words")
	log.Debug("not shown")
	log.Warn("slow", slog.Group("exec", "took", 3*time.Second))
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (no debug):\n%s", len(lines), b.String())
	}
	if _, err := time.Parse(time.TimeOnly, lines[0][:8]); err != nil {
		t.Fatalf("line does not start with the time: %q", lines[0])
	}
	if want := `INFO  path formed  client=ab12  peer.kind=srflx  peer.note="two words"`; lines[0][9:] != want {
		t.Fatalf("got  %q\nwant %q", lines[0][9:], want)
	}
	if want := "WARN  slow  client=ab12  exec.took=3s"; lines[1][9:] != want {
		t.Fatalf("got  %q\nwant %q", lines[1][9:], want)
	}
}

// auto means text (logfmt) when stderr is not a terminal, as under
// systemd; json is one object a line.
func TestLogFormats(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	newLogger(f, logAuto, false).Info("rendezvous up", "udp", "127.0.0.1:3478")
	newLogger(f, logJSON, true).Debug("detail", "n", 1)
	b, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `level=INFO msg="rendezvous up" udp=127.0.0.1:3478`) {
		t.Fatalf("auto off a terminal is not logfmt: %q", lines)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &obj); err != nil || obj["msg"] != "detail" || obj["level"] != "DEBUG" {
		t.Fatalf("json line %q: %v", lines[1], err)
	}
}

// The last line says "stopped" without an empty err attribute when the
// command stopped as asked, and at ERROR with the reason when it failed.
func TestStoppedLine(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, nil))
	logStopped(log, "daemon", nil)
	if got := b.String(); !strings.Contains(got, `level=INFO msg="daemon stopped"`) || strings.Contains(got, "err=") {
		t.Errorf("stopped as asked: %q", got)
	}
	b.Reset()
	logStopped(log, "rendezvous", errors.New("listen udp: address already in use"))
	if got := b.String(); !strings.Contains(got, `level=ERROR msg="rendezvous stopped" err="listen udp: address already in use"`) {
		t.Errorf("failed: %q", got)
	}
}
