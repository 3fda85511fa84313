package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClientInstallIdempotentAndUninstall(t *testing.T) {
	cfg := t.TempDir()
	a, b := t.TempDir(), t.TempDir()
	in := func(repo string) ClientInstall {
		return ClientInstall{Repo: repo, Binary: "/usr/bin/gcn-punch", ConfigHome: cfg}
	}
	unit := filepath.Join(cfg, "systemd", "user", "gcn-punch.service")
	if err := in(a).Install(); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(unit)
	in(a).Install()
	if again, _ := os.ReadFile(unit); string(again) != string(first) {
		t.Fatal("second install changed the unit")
	}
	in(b).Install()
	text, _ := os.ReadFile(unit)
	if !strings.Contains(string(text), `--repo "`+a+`" --repo "`+b+`"`) {
		t.Fatalf("unit does not follow both clones:\n%s", text)
	}
	in(a).Uninstall()
	text, _ = os.ReadFile(unit)
	if strings.Contains(string(text), `"`+a+`"`) || !strings.Contains(string(text), `"`+b+`"`) {
		t.Fatalf("after removing a:\n%s", text)
	}
	in(b).Uninstall()
	if _, err := os.Stat(unit); err == nil {
		t.Fatal("unit left after the last clone was removed")
	}
	// A unit that is not ours is never touched.
	os.MkdirAll(filepath.Dir(unit), 0o755)
	os.WriteFile(unit, []byte("[Service]\n"), 0o644)
	if err := in(a).Install(); err == nil {
		t.Fatal("overwrote a foreign unit")
	}
}
