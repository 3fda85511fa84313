package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// The simulated clients are 100k UDP sockets on one host; in production they
// are on 100k hosts and the rendezvous's host holds one socket. Every
// datagram delivered on loopback looks its socket up in the kernel's UDP hash
// table, whose size is set at boot from the RAM (16384 buckets on the 24 GiB
// machine these figures come from): with 100k sockets a lookup walks chains
// of about six, and that walk was the largest single item (17%) in the
// rendezvous's profile of a 100k fan-out, a cost of the simulation, not of
// the server. So, when it can (as root), the bench runs in a network
// namespace of its own whose table is sized for the simulation
// (net.ipv4.udp_child_hash_entries), and the report says which it used.
const (
	netnsEnv        = "GCN_BENCH_NETNS" // set in the re-executed bench
	childHashSysctl = "/proc/sys/net/ipv4/udp_child_hash_entries"
	hashSysctl      = "/proc/sys/net/ipv4/udp_hash_entries"
	// benchHashEntries is the largest table the kernel allows a namespace.
	benchHashEntries = 65536
)

// InOwnNetns reports whether this process is the bench re-executed in its
// own network namespace.
func InOwnNetns() bool { return os.Getenv(netnsEnv) != "" }

// RunInOwnNetns re-executes this command (args are os.Args) in a new
// network namespace with a UDP hash table sized for the simulated clients,
// with loopback up, and returns its exit status. It fails, and changes
// nothing, when the namespace cannot be made (not root, say); the caller
// then runs the bench where it is.
func RunInOwnNetns(args []string) (int, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return 0, errors.New("no ip(8) to bring loopback up")
	}
	old, err := os.ReadFile(childHashSysctl)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(childHashSysctl, []byte(strconv.Itoa(benchHashEntries)), 0o644); err != nil {
		return 0, err
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	// The namespace's table is sized when it is created: at the clone. The
	// setting goes back at once, before anything else can create one.
	shArgs := append([]string{"-c", `ip link set lo up && exec "$0" "$@"`, self}, args[1:]...)
	cmd := exec.Command("/bin/sh", shArgs...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	startErr := cmd.Start()
	os.WriteFile(childHashSysctl, []byte(strings.TrimSpace(string(old))), 0o644)
	if startErr != nil {
		return 0, startErr
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, fmt.Errorf("bench in its own network namespace: %w", err)
	}
	return 0, nil
}

// udpHashEntries is the size of this namespace's UDP hash table.
func udpHashEntries() int {
	b, _ := os.ReadFile(hashSysctl)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
