package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// Chat messages travel beside the event log, not in it: an older rendezvous
// reading a newer store must still parse every event line, and a message is
// a courtesy (a lost one costs the text, never the event). The hook writes a
// push's messages before it appends the events, so the rendezvous finds a
// message by the time it reads its event.
//
// Messages file layout, repos/<repo>/messages, one message a line, fields
// separated by one tab (wire.TrimText leaves none in the text fields):
//
//	<old>\t<new>\t<commits>\t<author>\t<subject>\n
//
// An event takes the message whose old and new object ids it has. Lines are
// appended without fsync; a torn last line is ignored.
type Message struct {
	Old, New string
	wire.Chat
}

const (
	// messagesMax is the size at which the hook rewrites the messages file
	// with its newer half: at about 150 bytes a line, thousands of pushes,
	// more than the rendezvous keeps (messagesKept).
	messagesMax = 1 << 20
	// messagesKept bounds the messages the rendezvous holds for events it
	// has not read yet: a push of more ref updates than this gets messages
	// for the last ones only.
	messagesKept = 4096
)

// MessagesPath is the messages file of a repository.
func (s *Store) MessagesPath(repoID string) string {
	return filepath.Join(s.repoDir(repoID), "messages")
}

func appendMessageLine(b []byte, m Message) []byte {
	return fmt.Appendf(b, "%s\t%s\t%d\t%s\t%s\n", m.Old, m.New, m.Count,
		wire.TrimText(m.Author, wire.MaxAuthor), wire.TrimText(m.Subject, wire.MaxSubject))
}

func parseMessageLine(line []byte) (Message, bool) {
	f := strings.Split(string(line), "\t")
	if len(f) != 5 || !hexOK(f[0]) || !hexOK(f[1]) {
		return Message{}, false
	}
	n, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		return Message{}, false
	}
	return Message{Old: f[0], New: f[1], Chat: wire.Chat{Count: uint32(n),
		Author: wire.TrimText(f[3], wire.MaxAuthor), Subject: wire.TrimText(f[4], wire.MaxSubject)}}, true
}

// AppendMessages appends a push's messages, in one write, and halves the
// file when it has grown past messagesMax.
func (s *Store) AppendMessages(repoID string, ms []Message) error {
	if len(ms) == 0 {
		return nil
	}
	if err := os.MkdirAll(s.repoDir(repoID), 0o750); err != nil {
		return err
	}
	var b []byte
	for _, m := range ms {
		b = appendMessageLine(b, m)
	}
	path := s.MessagesPath(repoID)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	fi, serr := f.Stat()
	f.Close()
	if err != nil || serr != nil || fi.Size() <= messagesMax {
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	half := old[len(old)/2:]
	if i := bytes.IndexByte(half, '\n'); i >= 0 {
		half = half[i+1:]
	}
	// Not fsynced, like the appends; a message appended by a push racing
	// this rewrite may be lost (its event is not).
	return atomicfile.Replace(path, half, 0o640)
}

// MessageReader follows a repository's messages file for the rendezvous:
// it reads what was appended since the last call (all of it again after
// the file was rewritten), and keeps the newest messagesKept by their
// events' object ids until an event takes one.
type MessageReader struct {
	offset int64
	ino    uint64
	byIDs  map[string]wire.Chat
	order  []string // keys in arrival order, to forget the oldest
}

// Load reads what is new in the file at path.
func (mr *MessageReader) Load(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if ino := Inode(fi); ino != mr.ino || fi.Size() < mr.offset {
		mr.ino, mr.offset = ino, 0
	}
	if fi.Size() == mr.offset {
		return nil
	}
	if _, err := f.Seek(mr.offset, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			// A line without its end is being written, or torn: later.
			if err == io.EOF || err == bufio.ErrBufferFull {
				if err == bufio.ErrBufferFull {
					mr.offset += int64(len(line)) // not a message line: skip it
					continue
				}
				return nil
			}
			return err
		}
		mr.offset += int64(len(line))
		if m, ok := parseMessageLine(line[:len(line)-1]); ok {
			mr.Add(m)
		}
	}
}

// Add takes one message, as if read from the file: a later one for the
// same old and new object ids replaces it.
func (mr *MessageReader) Add(m Message) {
	if mr.byIDs == nil {
		mr.byIDs = map[string]wire.Chat{}
	}
	k := m.Old + m.New
	if _, ok := mr.byIDs[k]; !ok {
		mr.order = append(mr.order, k)
	}
	mr.byIDs[k] = m.Chat
	for len(mr.order) > messagesKept {
		delete(mr.byIDs, mr.order[0])
		mr.order = mr.order[1:]
	}
}

// For returns the message of the event that moved a ref from old to new,
// if one was written.
func (mr *MessageReader) For(old, new string) (wire.Chat, bool) {
	c, ok := mr.byIDs[old+new]
	return c, ok
}

// Attach gives each event the message written for its old and new object
// ids, if there is one.
func (mr *MessageReader) Attach(evs []Event) {
	for i := range evs {
		if c, ok := mr.For(evs[i].Old, evs[i].New); ok {
			evs[i].Chat = &c
		}
	}
}
