package rendezvous

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// Watch is `gcn-heartbeat watch`: run by a daemon over SSH when UDP is
// blocked, it joins the SSH session (in, out) to the rendezvous's control
// socket as a stream. The first line on out is the rendezvous's answer
// ("ok", or "error <reason>", which is also Watch's error); frames follow
// both ways until either side ends. repoPath must be a repository this
// store serves, as for registration: an SSH user who follows nothing here
// gets no stream.
func Watch(st *store.Store, repoPath, home string, in io.Reader, out io.Writer) error {
	refuse := func(err error) error {
		fmt.Fprintf(out, "error %v\n", err)
		return err
	}
	if _, err := st.ServedRepo(repoPath, home); err != nil {
		return refuse(err)
	}
	c, err := net.DialTimeout("unix", st.SocketPath(), time.Second)
	if err != nil {
		return refuse(errors.New("the rendezvous is not running"))
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "stream\n"); err != nil {
		return refuse(err)
	}
	line, err := control.ReadLine(c, 512)
	if err != nil {
		return refuse(fmt.Errorf("the rendezvous did not answer: %v", err))
	}
	if _, err := io.WriteString(out, line); err != nil {
		return err
	}
	if line != "ok\n" {
		return errors.New(strings.TrimSpace(line))
	}
	c.SetDeadline(time.Time{})
	up := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, in)
		if uc, ok := c.(*net.UnixConn); ok {
			uc.CloseWrite() // the session ended: the rendezvous sees the stream end
		}
		up <- err
	}()
	_, err = io.Copy(out, c)
	c.Close()
	return err
}
