package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// DefaultRetain is how many events a log keeps after compaction. At about
// 150 bytes a line that is 1.5 MB, and ten thousand pushes is weeks of a busy
// chat: a client offline longer than that gets a resync notice.
const DefaultRetain = 10000

// Event is one ref update in a repository's log.
type Event struct {
	Seq       uint64
	TimeMilli int64
	Old, New  string // lowercase hex object ids
	Ref       string
	// Chat is the push's message, from the messages file (messages.go);
	// nil when none was written. It is not part of the log line.
	Chat *wire.Chat
}

// Update is a ref update as post-receive reads it: "<old> <new> <ref>".
type Update struct {
	Old string `json:"old"`
	New string `json:"new"`
	Ref string `json:"ref"`
}

// ErrBadEvent reports a log line that does not parse.
var ErrBadEvent = errors.New("store: malformed event line")

// ErrLogRewound reports a log that went backwards: its last sequence number
// is below the highest ever given out (it was truncated, or replaced by an
// older copy). Append still records the new events, numbered after the
// highest, in a fresh log; the old one is set aside for inspection.
var ErrLogRewound = errors.New("store: event log went backwards")

// ErrLogDamaged reports a log whose end cannot be read (its last line does
// not parse, or it ends in more than a line's worth of bytes without a line
// end). Append sets it aside and records the new events in a fresh log,
// after the highest number ever given out.
var ErrLogDamaged = errors.New("store: event log damaged at its end")

// Log line layout, one event a line, fields separated by one space:
//
//	<seq> <unix-ms> <old> <new> <ref>\n
//
// A line without its newline is a torn write: readers ignore it and the next
// append truncates it away.
func appendEventLine(b []byte, e Event) []byte {
	return fmt.Appendf(b, "%d %d %s %s %s\n", e.Seq, e.TimeMilli, e.Old, e.New, e.Ref)
}

func parseEventLine(line []byte) (Event, error) {
	f := strings.Split(string(line), " ")
	if len(f) != 5 {
		return Event{}, fmt.Errorf("%w: %d fields", ErrBadEvent, len(f))
	}
	seq, err1 := strconv.ParseUint(f[0], 10, 64)
	ms, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || seq == 0 || !hexOK(f[2]) || !hexOK(f[3]) || len(f[2]) != len(f[3]) || wire.ValidRef(f[4]) != nil {
		return Event{}, fmt.Errorf("%w: %q", ErrBadEvent, line)
	}
	return Event{Seq: seq, TimeMilli: ms, Old: f[2], New: f[3], Ref: f[4]}, nil
}

func (s *Store) repoDir(repoID string) string {
	return filepath.Join(s.Dir, "repos", repoDirName(repoID))
}

// LogPath is the event log of a repository.
func (s *Store) LogPath(repoID string) string { return filepath.Join(s.repoDir(repoID), "events.log") }

// HasLog reports whether the repository has an event log in this store.
func (s *Store) HasLog(repoID string) bool {
	_, err := os.Stat(s.LogPath(repoID))
	return err == nil
}

// seqPath holds the highest sequence number ever given out in a repository,
// 20 digits and a newline, rewritten in place (one sector: it is written
// whole or not at all) and synced after each append. It survives what
// happens to the log, so that no number is ever given out twice. An "H" in
// place of the newline says that the numbers above the log's end were given
// out to events held in memory for want of disk (held.go).
func (s *Store) seqPath(repoID string) string { return filepath.Join(s.repoDir(repoID), "seq") }

const seqLen = 21 // "%020d\n" or "%020dH"

// readSeq reads the high-water mark (0 when there is none yet, or it is
// unreadable: the log's own last number then stands alone), and whether
// events above the log's end are held in memory.
func readSeq(f *os.File) (v uint64, held bool) {
	b := make([]byte, seqLen+1)
	n, _ := f.ReadAt(b, 0)
	return readSeqBytes(b[:n])
}

// readSeqBytes parses a sequence mark's bytes.
func readSeqBytes(b []byte) (v uint64, held bool) {
	if len(b) != seqLen || b[seqLen-1] != '\n' && b[seqLen-1] != 'H' {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:seqLen-1]), 10, 64)
	if err != nil {
		return 0, false
	}
	return v, b[seqLen-1] == 'H'
}

// writeSeq rewrites the mark in place and syncs it. Overwriting the bytes
// of a file that has them needs no new disk blocks on ext4, xfs or tmpfs,
// so it works on a full disk there (a copy-on-write file system may refuse).
func writeSeq(f *os.File, v uint64, held bool) error {
	end := byte('\n')
	if held {
		end = 'H'
	}
	if _, err := f.WriteAt(append(fmt.Appendf(nil, "%020d", v), end), 0); err != nil {
		return fmt.Errorf("store: sequence mark: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store: sequence mark: %w", err)
	}
	return nil
}

// lockRepo takes a repository's append lock (flock, so hooks and the
// rendezvous exclude each other) and opens its sequence mark.
func (s *Store) lockRepo(repoID string) (seqf *os.File, unlock func(), err error) {
	dir := s.repoDir(repoID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, nil, err
	}
	seqf, err = os.OpenFile(s.seqPath(repoID), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	return seqf, func() { seqf.Close(); lock.Close() }, nil
}

func (s *Store) retain() int {
	if s.Retain > 0 {
		return s.Retain
	}
	return DefaultRetain
}

// Append gives each update the next sequence number, appends them to the
// repository's log and fsyncs it before returning. Concurrent appenders are
// serialised with flock. It compacts the log when it holds twice Retain.
// A number is never given out twice: when the log went backwards, the
// events are recorded all the same, after the highest number ever given
// out, and the error wraps ErrLogRewound. With any other error returned
// beside events, those events were recorded too. While a rendezvous holds
// events in memory for want of disk, Append records nothing and returns
// ErrHeld: the updates go to that rendezvous (Hold), or, if it is gone,
// to AppendAfterLostHold.
func (s *Store) Append(repoID string, ups []Update, now time.Time) ([]Event, error) {
	return s.append(repoID, ups, now, false)
}

// AppendAfterLostHold is Append for when the rendezvous that held events
// in memory is gone: their numbers stay given out, the new events follow
// them, and the error wraps ErrHeldLost.
func (s *Store) AppendAfterLostHold(repoID string, ups []Update, now time.Time) ([]Event, error) {
	return s.append(repoID, ups, now, true)
}

func (s *Store) append(repoID string, ups []Update, now time.Time, takeOver bool) ([]Event, error) {
	seqf, unlock, err := s.lockToAppend(repoID, ups)
	if err != nil {
		return nil, err
	}
	defer unlock()
	highest, held := readSeq(seqf)
	if held && !takeOver {
		return nil, ErrHeld
	}
	f, err := os.OpenFile(s.LogPath(repoID), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	defer func() { f.Close() }() // f may be replaced below
	// setAside renames the log for inspection and opens a fresh one.
	setAside := func(kind string) (string, error) {
		aside := fmt.Sprintf("%s.%s-%d", s.LogPath(repoID), kind, now.UnixNano())
		if err := os.Rename(s.LogPath(repoID), aside); err != nil {
			return "", err
		}
		f.Close()
		f, err = os.OpenFile(s.LogPath(repoID), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o640)
		return filepath.Base(aside), err
	}
	var recovered error // what was wrong, when the events are recorded all the same
	first, last, end, err := logBounds(f)
	if err != nil {
		// Its end cannot be read: set it aside, and go on after the highest
		// number it or the mark holds.
		if _, serr := f.Seek(0, io.SeekStart); serr != nil {
			return nil, serr
		}
		if evs, _, rerr := ReadEvents(f, 0); len(evs) > 0 {
			highest = max(highest, evs[len(evs)-1].Seq)
		} else if rerr != nil && !errors.As(rerr, new(*DamageError)) {
			return nil, rerr
		}
		aside, aerr := setAside("damaged")
		if aerr != nil {
			return nil, aerr
		}
		recovered = fmt.Errorf("%w (%v); set aside as %s, new events continue at %d", ErrLogDamaged, err, aside, highest+1)
		first, last, end = 0, highest, 0
	} else if held && last < highest {
		// A rendezvous held events above the log's end and is gone: their
		// numbers stay given out (clients may have acked them), and the new
		// events follow them. Clients that missed them get a resync notice.
		recovered = fmt.Errorf("%w: events %d to %d were held in memory by a rendezvous that stopped before it could write them; new events continue at %d",
			ErrHeldLost, last+1, highest, highest+1)
		last = highest
	} else if last < highest {
		// The log went backwards. Numbers up to highest were given out
		// (and may have been acked): set this log aside, and go on after
		// highest in a fresh one.
		aside, aerr := setAside("rewound")
		if aerr != nil {
			return nil, aerr
		}
		recovered = fmt.Errorf("%w: it ends at sequence %d, but %d was given out; set aside as %s, new events continue at %d",
			ErrLogRewound, last, highest, aside, highest+1)
		first, last, end = 0, highest, 0
	}
	if err := f.Truncate(end); err != nil { // drop a torn tail
		return nil, err
	}
	if _, err := f.Seek(end, io.SeekStart); err != nil {
		return nil, err
	}
	evs := numbered(ups, last, now)
	var buf []byte
	for _, e := range evs {
		buf = appendEventLine(buf, e)
	}
	if _, err := f.Write(buf); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	head := last + uint64(len(ups))
	// The mark follows the log: after a crash between the two it may lag,
	// never lead, and the log's own last number stands.
	if err := writeSeq(seqf, head, false); err != nil {
		return evs, err
	}
	if first != 0 && head-first+1 >= uint64(2*s.retain()) {
		if err := s.compact(repoID, head); err != nil {
			return evs, fmt.Errorf("store: compaction: %w", err)
		}
	}
	return evs, recovered
}

// logBounds finds the first and last sequence numbers of a log and the
// offset just past its last complete line.
func logBounds(f *os.File) (first, last uint64, end int64, err error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return 0, 0, 0, err
	}
	// Lines are at most about 1.2 KB, so the last complete one lies in the
	// final 4 KiB even behind a torn one.
	off := max(size-4096, 0)
	tail := make([]byte, size-off)
	if _, err := f.ReadAt(tail, off); err != nil && err != io.EOF {
		return 0, 0, 0, err
	}
	nl := bytes.LastIndexByte(tail, '\n')
	if nl < 0 {
		if off == 0 {
			return 0, 0, 0, nil // only a torn first line
		}
		return 0, 0, 0, fmt.Errorf("%w: no line end in the last 4 KiB", ErrBadEvent)
	}
	end = off + int64(nl) + 1
	prev := bytes.LastIndexByte(tail[:nl], '\n')
	if prev < 0 && off != 0 {
		return 0, 0, 0, fmt.Errorf("%w: line longer than 4 KiB", ErrBadEvent)
	}
	e, err := parseEventLine(tail[prev+1 : nl])
	if err != nil {
		return 0, 0, 0, err
	}
	head := make([]byte, min(4096, size))
	if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
		return 0, 0, 0, err
	}
	firstLine, _, _ := bytes.Cut(head, []byte{'\n'})
	first = 1 // a damaged first line leaves the start unknown: compaction then comes early, and drops it
	if fe, err := parseEventLine(firstLine); err == nil {
		first = fe.Seq
	}
	return first, e.Seq, end, nil
}

// compact rewrites the log keeping the last Retain events. Called with the lock held.
func (s *Store) compact(repoID string, head uint64) error {
	evs, err := s.ReadLog(repoID, head-uint64(s.retain()))
	var dmg *DamageError
	if err != nil && !errors.As(err, &dmg) {
		return err // damaged lines are left out of the compacted log
	}
	var buf []byte
	for _, e := range evs {
		buf = appendEventLine(buf, e)
	}
	return atomicfile.WriteFile(s.LogPath(repoID), buf, 0o640)
}

// ReadLog returns the events of a repository with Seq > after, in order.
// A torn last line is ignored. Damage (see ReadEvents) costs only the
// damaged lines: the events around them are returned, with a *DamageError.
func (s *Store) ReadLog(repoID string, after uint64) ([]Event, error) {
	f, err := os.Open(s.LogPath(repoID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	evs, _, err := ReadEvents(f, after)
	return evs, err
}

// DamageError describes the damaged lines of a log that ReadEvents skipped.
type DamageError struct {
	Lines int    // damaged lines skipped
	Gaps  int    // places where lines are missing
	First string // what was wrong first, and where
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("%v: %d damaged line(s) skipped, %d gap(s); first %s", ErrBadEvent, e.Lines, e.Gaps, e.First)
}

func (e *DamageError) Unwrap() error { return ErrBadEvent }

// maxLogLine bounds a log line: the longest event is about 1.2 KB.
const maxLogLine = 4 << 10

// ReadEvents reads complete event lines from r, keeping those with Seq >
// after, and returns how many bytes of complete lines it consumed. A damaged
// line (one that does not parse, is longer than maxLogLine, or does not
// number after the line before it) is skipped, with the events around it
// returned, so that damage costs only what is damaged: then err is a
// *DamageError and evs and consumed are as complete as without it. The
// events may have gaps where lines were lost. Any other error is a read
// error.
func ReadEvents(r io.Reader, after uint64) (evs []Event, consumed int64, err error) {
	br := bufio.NewReaderSize(r, maxLogLine)
	var prev uint64
	var dmg *DamageError
	note := func(offset int64, what string) {
		if dmg == nil {
			dmg = &DamageError{First: fmt.Sprintf("at byte %d: %s", offset, what)}
		}
	}
	damaged := func(offset int64, what string) { note(offset, what); dmg.Lines++ }
	done := func() ([]Event, int64, error) {
		if dmg != nil {
			return evs, consumed, dmg
		}
		return evs, consumed, nil
	}
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// Longer than any event: skip to the end of this line, if it has one.
			n := int64(len(line))
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				n += int64(len(line))
			}
			if err == io.EOF {
				// More than a line's worth without a line end: not a
				// write in progress but damage.
				damaged(consumed, fmt.Sprintf("%d bytes at the end without a line end", n))
				return done()
			}
			if err != nil {
				return evs, consumed, err
			}
			damaged(consumed, fmt.Sprintf("a line of %d bytes", n))
			consumed += n
			continue
		}
		if err == io.EOF {
			return done() // a torn tail, or none
		}
		if err != nil {
			return evs, consumed, err
		}
		e, perr := parseEventLine(line[:len(line)-1])
		switch {
		case perr != nil:
			damaged(consumed, perr.Error())
		case prev != 0 && e.Seq <= prev:
			damaged(consumed, fmt.Sprintf("sequence %d after %d", e.Seq, prev))
		default:
			if prev != 0 && e.Seq != prev+1 {
				note(consumed, fmt.Sprintf("sequence %d follows %d", e.Seq, prev))
				dmg.Gaps++ // the line itself is good: the ones before it are missing
			}
			prev = e.Seq
			if e.Seq > after {
				evs = append(evs, e)
			}
		}
		consumed += int64(len(line))
	}
}

// Repos lists the repository ids that have a log.
func (s *Store) Repos() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "repos"))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		id := repoIDFromDir(e.Name())
		if e.IsDir() && wire.ValidRepoID(id) == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Head returns the last sequence number of a repository's log (0 if empty).
func (s *Store) Head(repoID string) (uint64, error) {
	f, err := os.Open(s.LogPath(repoID))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	_, last, _, err := logBounds(f)
	return last, err
}
