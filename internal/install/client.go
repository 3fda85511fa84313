package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/punch"
)

const clientUnitMarker = "# gcn-punch-daemon-unit v1"

// ClientInstall describes `gcn-punch install client`: a systemd user unit
// running one daemon for every installed clone.
type ClientInstall struct {
	Repo   string // the clone
	Binary string // absolute path of gcn-punch
	Exec   string // optional --exec program for the unit
	Out    io.Writer
	// ConfigHome overrides $XDG_CONFIG_HOME (tests).
	ConfigHome string
}

func (o ClientInstall) paths() (unit, list string, err error) {
	cfg := o.ConfigHome
	if cfg == "" {
		cfg = os.Getenv("XDG_CONFIG_HOME")
	}
	if cfg == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", "", err
		}
		cfg = filepath.Join(home, ".config")
	}
	return filepath.Join(cfg, "systemd", "user", "gcn-punch.service"), filepath.Join(cfg, "gcn-punch", "clones"), nil
}

func readList(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out, err
}

// systemdQuote quotes one ExecStart argument for systemd.
func systemdQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$").Replace(s) + `"`
}

// Install adds the clone to the list and rewrites the unit; idempotent.
func (o ClientInstall) Install() error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	clone, err := filepath.Abs(o.Repo)
	if err != nil {
		return err
	}
	if err := punch.CheckClone(context.Background(), clone, true); err != nil {
		return err
	}
	unit, list, err := o.paths()
	if err != nil {
		return err
	}
	if exists, ours := FileHasMarker(unit, clientUnitMarker); exists && !ours {
		return fmt.Errorf("%s exists and was not written by gcn-punch", unit)
	}
	clones, err := readList(list)
	if err != nil {
		return err
	}
	if !slices.Contains(clones, clone) {
		clones = append(clones, clone)
	}
	if err := o.write(unit, list, clones); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, `systemd user unit %s follows %d clone(s)
start it:  systemctl --user daemon-reload && systemctl --user enable --now gcn-punch

The daemon registers over SSH with your usual credentials. A user service does
not see your login shell's SSH agent: run
    systemctl --user import-environment SSH_AUTH_SOCK
after login (e.g. from your shell profile), or use a key without a passphrase
for this server. It never prompts (BatchMode) and never weakens host key
checking: ssh to the server once by hand first so its host key is known.
`, unit, len(clones))
	return nil
}

func (o ClientInstall) write(unit, list string, clones []string) error {
	for _, d := range []string{filepath.Dir(unit), filepath.Dir(list)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	args := []string{systemdQuote(o.Binary), "daemon"}
	for _, c := range clones {
		args = append(args, "--repo", systemdQuote(c))
	}
	if o.Exec != "" {
		args = append(args, "--exec", systemdQuote(o.Exec))
	}
	text := fmt.Sprintf(`%s
[Unit]
Description=gcn-punch daemon: git push notifications
Documentation=man:gcn-punch(1)
After=network-online.target

[Service]
ExecStart=%s
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
`, clientUnitMarker, strings.Join(args, " "))
	if err := atomicfile.WriteFile(list, []byte(strings.Join(clones, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFile(unit, []byte(text), 0o644)
}

// Uninstall removes the clone; with none left, the unit and the list go too.
func (o ClientInstall) Uninstall() error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	clone, err := filepath.Abs(o.Repo)
	if err != nil {
		return err
	}
	unit, list, err := o.paths()
	if err != nil {
		return err
	}
	clones, err := readList(list)
	if err != nil {
		return err
	}
	clones = slices.DeleteFunc(clones, func(c string) bool { return c == clone })
	if _, ours := FileHasMarker(unit, clientUnitMarker); !ours {
		return nil // nothing of ours to remove
	}
	if len(clones) > 0 {
		return o.write(unit, list, clones)
	}
	os.Remove(list)
	os.Remove(filepath.Dir(list)) // only if empty
	if err := os.Remove(unit); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "removed %s (run systemctl --user daemon-reload)\n", unit)
	return nil
}
