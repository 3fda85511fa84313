package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// pkgPrefix matches the Go package names that errors from the packages
// carry ("punch: ", "store: "): useful in code, noise to a user.
var pkgPrefix = regexp.MustCompile(`(^|: |\()(punch|rendezvous|store|wire|hook|install|control|udpconn|action): `)

// errText is how a command's error reads to its user: each thing once,
// without Go package prefixes, on one line, and for a port in use, which
// process holds it.
func errText(err error) string {
	s := pkgPrefix.ReplaceAllString(err.Error(), "$1")
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\r", "")), " ")
	if errors.Is(err, syscall.EADDRINUSE) {
		if port := portOf(s); port > 0 {
			if who := udpPortHolder(port); who != "" {
				s += fmt.Sprintf(" (held by %s): stop it, or choose another port", who)
			} else {
				s += ": another process holds this port; choose another"
			}
		}
	}
	return s
}

// portOf finds the port in "listen udp HOST:PORT: bind: ...".
var listenRE = regexp.MustCompile(`listen udp[46]? \[?[^\s\]]*\]?:(\d+)`)

func portOf(s string) int {
	m := listenRE.FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	p, _ := strconv.Atoi(m[1])
	return p
}

// udpPortHolder names the process with a UDP socket on port ("PID 123,
// gcn-punch"), from /proc; "" when it cannot tell (another user's
// process, or not Linux).
func udpPortHolder(port int) string {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes[fields[9]] = true
			}
		}
	}
	if len(inodes) == 0 {
		return ""
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range procs {
		link, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		if inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
			pid := strings.Split(fd, "/")[2]
			comm, _ := os.ReadFile(filepath.Join("/proc", pid, "comm"))
			return fmt.Sprintf("PID %s, %s", pid, strings.TrimSpace(string(comm)))
		}
	}
	return ""
}
