package main

import (
	goflag "flag"
	"os"
	"os/exec"
	"strings"
	"testing"

	flag "github.com/spf13/pflag"
)

var updateMan = goflag.Bool("update-man", false, "rewrite docs/gcn-punch.1 from the flag definitions")

const manPath = "../../docs/gcn-punch.1"

// The committed manual page is the one the flag definitions give: a flag
// added, renamed or reworded without `make man` fails here.
func TestManPageIsCurrent(t *testing.T) {
	// Defaults under $XDG_* would differ between users: the page gives
	// the ~/ forms.
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("XDG_CONFIG_HOME", "")
	page := manPage()
	if again := manPage(); again != page {
		t.Fatal("the page is not the same twice")
	}
	if *updateMan {
		if err := os.WriteFile(manPath, []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(manPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != page {
		t.Fatal("docs/gcn-punch.1 is not what the flag definitions give: run `make man` and commit it")
	}
	// Every command's every flag is in it, and each command has a section.
	for _, c := range manCommands() {
		if !strings.Contains(page, roff(c.name)+`"`) && !strings.Contains(page, roff(c.name)+`)"`) {
			t.Errorf("no section for %s", c.name)
		}
		fs := commandFlags(c)
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(page, `\fB\-\-`+roff(f.Name)+`\fR`) {
				t.Errorf("%s: --%s missing from the page", c.name, f.Name)
			}
		})
	}
	for _, section := range []string{".SH COMMANDS AND OPTIONS", ".SH EXAMPLES", ".SH FILES", ".SH EXIT STATUS"} {
		if !strings.Contains(page, section) {
			t.Errorf("page lacks %s", section)
		}
	}
	// man(1) renders it without a warning, where man is installed.
	if _, err := exec.LookPath("groff"); err == nil {
		out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", manPath).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Fatalf("groff warns: %v\n%s", err, out)
		}
	}
}
