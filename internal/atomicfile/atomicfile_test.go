package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesWholeAndLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, w := range []func(string, []byte, os.FileMode) error{WriteFile, Replace} {
		if err := w(p, []byte("one\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := w(p, []byte("two\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != "two\n" {
			t.Fatalf("content %q %v", b, err)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %v", fi.Mode())
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			t.Fatalf("left behind: %v", ents)
		}
	}
}

func TestWriteFileIntoMissingDirectoryFails(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "f"), nil, 0o600); err == nil {
		t.Fatal("wrote into a directory that does not exist")
	}
}
