package punch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gitchat/gcn-punch/wire"
)

var stateKey = wire.Key{1}

func savedPositions(t *testing.T, dir string, n int) *State {
	t.Helper()
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		r := st.repo(stateKey, "chat.git")
		r.Known, r.LastSeq = true, uint64(i)
		if err := st.save(dir); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// Each save is one journal line; loading returns the newest state, and
// state.json is only written when the journal is folded into it.
func TestStateJournalKeepsEverySave(t *testing.T) {
	dir := t.TempDir()
	savedPositions(t, dir, 5)
	if _, err := os.Stat(filepath.Join(dir, stateName)); !os.IsNotExist(err) {
		t.Fatalf("state.json written on a plain save: %v", err)
	}
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.repo(stateKey, "chat.git"); r.LastSeq != 5 || st.Gen != 5 {
		t.Fatalf("loaded seq %d gen %d, want 5 5", r.LastSeq, st.Gen)
	}
}

// A line a crash cut short is ignored: the state before it stands.
func TestStateJournalTornLineIgnored(t *testing.T) {
	dir := t.TempDir()
	savedPositions(t, dir, 3)
	j := filepath.Join(dir, journalName)
	b, _ := os.ReadFile(j)
	torn := append(b, []byte(`{"version":1,"gen":4,"servers":{"01`)...)
	if err := os.WriteFile(j, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.repo(stateKey, "chat.git"); r.LastSeq != 3 {
		t.Fatalf("seq %d after a torn line, want 3", r.LastSeq)
	}
	// Folding (as the daemon does when it starts) drops the torn bytes, so
	// the next save is a whole line of its own.
	if err := st.compact(dir); err != nil {
		t.Fatal(err)
	}
	st.repo(stateKey, "chat.git").LastSeq = 4
	if err := st.save(dir); err != nil {
		t.Fatal(err)
	}
	if st, _ = loadState(dir); st.repo(stateKey, "chat.git").LastSeq != 4 {
		t.Fatalf("seq %d after fold and save, want 4", st.repo(stateKey, "chat.git").LastSeq)
	}
}

// Past journalCompactAt the journal is folded into state.json and emptied;
// a state.json newer than the journal's lines wins over them.
func TestStateJournalCompacts(t *testing.T) {
	dir := t.TempDir()
	st := savedPositions(t, dir, 1)
	line, _ := os.ReadFile(filepath.Join(dir, journalName))
	n := journalCompactAt/len(line) + 2
	savedPositions(t, dir, n)
	fi, err := os.Stat(filepath.Join(dir, journalName))
	if err != nil || fi.Size() > journalCompactAt {
		t.Fatalf("journal not compacted: %v, %d bytes", err, fi.Size())
	}
	if _, err := os.Stat(filepath.Join(dir, stateName)); err != nil {
		t.Fatalf("no state.json after compaction: %v", err)
	}
	st, err = loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.repo(stateKey, "chat.git"); r.LastSeq != uint64(n) {
		t.Fatalf("seq %d, want %d", r.LastSeq, n)
	}
	// An old line left by a crash between writing state.json and emptying
	// the journal loses to state.json.
	if err := st.compact(dir); err != nil {
		t.Fatal(err)
	}
	old := `{"version":1,"gen":1,"servers":{},"pending":null}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, journalName), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, _ = loadState(dir); st.repo(stateKey, "chat.git").LastSeq != uint64(n) {
		t.Fatal("an older journal line overrode state.json")
	}
}

// The daemon folds the journal into state.json when it starts.
func TestNewDaemonFoldsJournal(t *testing.T) {
	dir := t.TempDir()
	savedPositions(t, dir, 2)
	if _, err := New(Config{StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, journalName)); fi.Size() != 0 {
		t.Fatalf("journal still holds %d bytes", fi.Size())
	}
	st, _ := loadState(dir)
	if st.repo(stateKey, "chat.git").LastSeq != 2 || len(b) == 0 {
		t.Fatal("state.json lacks the journal's state")
	}
}

// unpin forgets a pin by its full name or by host, only while no daemon
// runs on the state directory, and says when there is nothing to forget.
func TestUnpin(t *testing.T) {
	dir := t.TempDir()
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Pins = map[string]string{"git@chat.example:22": "aa", "git@[2001:db8::1]:22": "bb", "git@other.example:22": "cc"}
	if err := st.compact(dir); err != nil {
		t.Fatal(err)
	}
	release, err := LockState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unpin(dir, "chat.example"); !errors.Is(err, ErrStateLocked) {
		t.Fatalf("unpin while a daemon runs: %v", err)
	}
	release()
	if got, err := Unpin(dir, "chat.example"); err != nil || len(got) != 1 || got["git@chat.example:22"] != "aa" {
		t.Fatalf("by host: %v, %v", got, err)
	}
	if got, err := Unpin(dir, "git@[2001:db8::1]:22"); err != nil || len(got) != 1 {
		t.Fatalf("by name: %v, %v", got, err)
	}
	if _, err := Unpin(dir, "chat.example"); err == nil || !strings.Contains(err.Error(), "no key is pinned") || !strings.Contains(err.Error(), "the pins there are git@other.example:22 (give one") {
		t.Fatalf("nothing left to unpin: %v", err)
	}
	st, _ = loadState(dir)
	if len(st.Pins) != 1 || st.Pins["git@other.example:22"] != "cc" {
		t.Fatalf("pins left: %v", st.Pins)
	}
}
