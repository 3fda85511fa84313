package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
)

// A command's error reads once, without Go package prefixes, on one line.
func TestErrTextDropsPackagePrefixes(t *testing.T) {
	err := fmt.Errorf("punch: %s: %w", "/home/a/state.json", errors.New("store: malformed record\r\nsecond line"))
	if got, want := errText(err), "/home/a/state.json: malformed record second line"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if got := errText(errors.New("--listen (wire: invalid field)")); got != "--listen (invalid field)" {
		t.Fatalf("%q", got)
	}
}

// A port in use names the process that holds it.
func TestErrTextNamesThePortHolder(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = net.ListenUDP("udp", c.LocalAddr().(*net.UDPAddr))
	if err == nil {
		t.Fatal("the port was bound twice")
	}
	got := errText(err)
	if !strings.Contains(got, fmt.Sprintf("held by PID %d", os.Getpid())) || !strings.Contains(got, "choose another port") {
		t.Fatalf("%q does not name this process", got)
	}
}
