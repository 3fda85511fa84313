// Package control is the client side of the local control sockets: one request line, one reply.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Dial sends one request line on the unix socket and returns everything the
// server writes back before it closes the connection, all within timeout.
func Dial(socket, request string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(request + "\n")); err != nil {
		return "", err
	}
	var sb strings.Builder
	_, err = bufio.NewReader(c).WriteTo(&sb)
	if err != nil && sb.Len() == 0 {
		return "", err
	}
	return sb.String(), nil
}

// ReadLine reads one line byte by byte, so that nothing after it is taken
// from r (a stream's frames follow its first line); at most limit bytes.
func ReadLine(r io.Reader, limit int) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for b.Len() < limit {
		if _, err := io.ReadFull(r, one); err != nil {
			return b.String(), err
		}
		b.WriteByte(one[0])
		if one[0] == '\n' {
			return b.String(), nil
		}
	}
	return b.String(), errors.New("line too long")
}

// ErrNotRunning says that nothing answers on the control socket.
var ErrNotRunning = errors.New("not running")

// NotRunning is ErrNotRunning, said as msg (which tells what to start).
func NotRunning(msg string) error { return notRunning(msg) }

type notRunning string

func (e notRunning) Error() string { return string(e) }
func (e notRunning) Unwrap() error { return ErrNotRunning }

// AskJSON sends one request and decodes the JSON reply into v. A socket
// that does not answer is ErrNotRunning (wrapping the reason).
func AskJSON(socket, request string, timeout time.Duration, v any) error {
	reply, err := Dial(socket, request, timeout)
	if err != nil {
		return fmt.Errorf("%w (%s: %v)", ErrNotRunning, socket, err)
	}
	if err := json.Unmarshal([]byte(reply), v); err != nil {
		return fmt.Errorf("bad %s reply from %s: %w", request, socket, err)
	}
	return nil
}

// Listen opens the control socket at path, mode 0660. A socket left behind
// by a killed server is taken over; one that still answers is refused.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another process is serving %s", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(path, 0o660)
	return l, nil
}

// maxRequest bounds one request line: the largest, a hook's "hold", is
// under 400 KB.
const maxRequest = 1 << 20

// requestTimeout is how long one control client may take: a person's
// `status` or the hook's poke, never more than this.
const requestTimeout = time.Second

// Serve answers requests on l until ctx ends or l is closed. Each
// connection carries one line "<command>[ <argument>]"; handle writes the
// reply to w.
func Serve(ctx context.Context, l net.Listener, log *slog.Logger, handle func(w io.Writer, cmd, arg string)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("control socket accept", "err", err)
			continue
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(requestTimeout))
			line, err := bufio.NewReaderSize(io.LimitReader(c, maxRequest), 4096).ReadString('\n')
			if err != nil {
				return
			}
			cmd, arg, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
			handle(c, cmd, arg)
		})
	}
}
