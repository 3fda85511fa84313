package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gitchat/gcn-punch/hook"
	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// Markers identify files that install wrote, so that install can rewrite
// them (idempotence) and uninstall removes nothing else.
const (
	hookMarker      = "# gcn-punch-hook v1"
	heartbeatMarker = "# gcn-punch-heartbeat v1"
	unitMarker      = "# gcn-punch-rendezvous-unit v1"
	chainedSuffix   = ".pre-gcn-punch"
	// UnitPath is where the rendezvous's systemd unit goes when run as root.
	UnitPath = "/etc/systemd/system/gcn-punch-rendezvous.service"
)

// ServerInstall describes `gcn-punch install server`.
type ServerInstall struct {
	Repo   string // repository path
	RepoID string // "" : git config gcnpunch.repoid, else the directory name
	Store  string
	Listen string
	User   string // the git user; required as root, must be the caller otherwise
	Binary string // absolute path of gcn-punch
	Out    io.Writer
	// UnitPath overrides where the unit is written (tests); "" : UnitPath.
	UnitPath string
}

type account struct {
	name     string
	home     string
	uid, gid int
}

func (a account) chown(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Lchown(path, a.uid, a.gid)
}

func resolveUser(name string) (account, error) {
	if os.Geteuid() == 0 && name == "" {
		return account{}, errors.New("run as the git user, or as root with --user GITUSER")
	}
	var u *user.User
	var err error
	if name == "" {
		u, err = user.Current()
	} else {
		u, err = user.Lookup(name)
	}
	if err != nil {
		return account{}, err
	}
	if os.Geteuid() != 0 && strconv.Itoa(os.Geteuid()) != u.Uid {
		return account{}, fmt.Errorf("--user %s: only root may install for another user", name)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return account{name: u.Username, home: u.HomeDir, uid: uid, gid: gid}, nil
}

// shellQuote quotes s for /bin/sh. Only the administrator's own paths go
// through it; notification fields never reach a shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func hooksDir(repo string) (string, error) {
	out, err := gitcmd.Output(context.Background(), repo, "-c", "safe.directory=*", "rev-parse", "--path-format=absolute", "--git-path", "hooks")
	if err != nil {
		return "", fmt.Errorf("%s is not a git repository", repo)
	}
	return out, nil
}

// writeOwned writes a file atomically, chowned to the account.
func writeOwned(a account, path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, mode); err != nil {
		return err
	}
	return a.chown(path)
}

// FileHasMarker reports whether path exists and whether it carries the
// marker that says an install wrote it.
func FileHasMarker(path, marker string) (exists, ours bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist), false
	}
	return true, strings.Contains(string(b), marker)
}

// locate resolves the git user, the repository and its hooks directory.
func (o *ServerInstall) locate() (acct account, repo, hooks string, err error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if acct, err = resolveUser(o.User); err != nil {
		return
	}
	if repo, err = filepath.Abs(o.Repo); err != nil {
		return
	}
	hooks, err = hooksDir(repo)
	return
}

// Install sets the server side up; running it again changes nothing more.
func (o ServerInstall) Install() error {
	acct, repo, hooks, err := o.locate()
	if err != nil {
		return err
	}
	for _, w := range BinaryWarnings(o.Binary) {
		fmt.Fprintf(o.Out, "warning: %s\n", w)
	}
	id := o.RepoID
	if id == "" {
		if id, err = hook.RepoID(repo); err != nil {
			return err
		}
	}
	// The store, owned by the git user.
	st, err := store.Open(o.Store)
	if err != nil {
		return err
	}
	if err := st.Serve(id, repo); err != nil {
		return err
	}
	if err := filepath.WalkDir(st.Dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return acct.chown(p)
	}); err != nil {
		return err
	}
	if err := os.Chmod(st.Dir, 0o750); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "store %s (owner %s, mode 0750), serving %s as %q\n", st.Dir, acct.name, repo, id)

	// The post-receive hook, chaining one that was there before.
	if err := os.MkdirAll(hooks, 0o755); err != nil {
		return err
	}
	hookPath := filepath.Join(hooks, "post-receive")
	if exists, ours := FileHasMarker(hookPath, hookMarker); exists && !ours {
		chained := hookPath + chainedSuffix
		if _, err := os.Stat(chained); err == nil {
			return fmt.Errorf("%s and %s both exist: move one away first", hookPath, chained)
		}
		if err := os.Rename(hookPath, chained); err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "existing hook kept as %s; it still runs after gcn-punch\n", chained)
	}
	hook := fmt.Sprintf(`#!/bin/sh
%s: installed by gcn-punch install server; remove with gcn-punch uninstall server.
# Notifies first (it returns in milliseconds and never fails), then runs the
# previous post-receive hook, if there was one, and returns its status.
input=$(cat)
printf '%%s\n' "$input" | %s hook --store %s --repo-id %s
chained="$(dirname "$0")/post-receive%s"
if [ -x "$chained" ]; then
	printf '%%s\n' "$input" | "$chained" "$@"
	exit $?
fi
exit 0
`, hookMarker, shellQuote(o.Binary), shellQuote(st.Dir), shellQuote(id), chainedSuffix)
	if err := writeOwned(acct, hookPath, []byte(hook), 0o755); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "hook %s\n", hookPath)

	// The git-shell command clients run over SSH.
	cmds := filepath.Join(acct.home, "git-shell-commands")
	if err := os.MkdirAll(cmds, 0o755); err != nil {
		return err
	}
	if err := acct.chown(cmds); err != nil {
		return err
	}
	hbPath := filepath.Join(cmds, "gcn-heartbeat")
	if exists, ours := FileHasMarker(hbPath, heartbeatMarker); exists && !ours {
		return fmt.Errorf("%s exists and was not written by gcn-punch", hbPath)
	}
	// The store travels in the environment: a client over SSH picks the
	// arguments, so none of them may choose the store.
	hb := fmt.Sprintf("#!/bin/sh\n%s: installed by gcn-punch install server\nGCN_STORE=%s exec %s heartbeat \"$@\"\n",
		heartbeatMarker, shellQuote(st.Dir), shellQuote(o.Binary))
	if err := writeOwned(acct, hbPath, []byte(hb), 0o755); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "git-shell command %s\n", hbPath)

	unit := Unit(acct.name, o.Binary, o.Listen, st.Dir)
	if os.Geteuid() != 0 {
		fmt.Fprintf(o.Out, "\nnot root: the systemd unit is printed, not written. As root, save it as %s:\n\n%s", UnitPath, unit)
		return nil
	}
	up := o.UnitPath
	if up == "" {
		up = UnitPath
	}
	if exists, ours := FileHasMarker(up, unitMarker); exists && !ours {
		return fmt.Errorf("%s exists and was not written by gcn-punch", up)
	}
	if err := atomicfile.WriteFile(up, []byte(unit), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "systemd unit %s\nstart it: systemctl daemon-reload && systemctl enable --now gcn-punch-rendezvous\n", up)
	return nil
}

// BinaryWarnings says why the services might not see or run the binary at
// path: the rendezvous unit runs with PrivateTmp (its /tmp and /var/tmp
// are its own, empty), and the hook and the git-shell command run as the
// git user, who must be able to reach the file through every directory.
func BinaryWarnings(path string) []string {
	var out []string
	for _, tmp := range []string{"/tmp/", "/var/tmp/", "/dev/shm/"} {
		if strings.HasPrefix(filepath.Clean(path)+"/", tmp) {
			out = append(out, fmt.Sprintf("%s is under %s, which the rendezvous's systemd unit does not see (PrivateTmp=yes) and which may be cleaned: install it first (make install, or copy it to /usr/local/bin) and give --binary", path, tmp))
			break
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return append(out, fmt.Sprintf("%s: %v", path, err))
	}
	if fi.Mode().Perm()&0o001 == 0 {
		out = append(out, fmt.Sprintf("%s is not executable by other users (mode %v): the git user may not run it", path, fi.Mode().Perm()))
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if di, err := os.Stat(dir); err == nil && di.Mode().Perm()&0o001 == 0 {
			out = append(out, fmt.Sprintf("%s is inside %s (mode %v), which other users cannot enter: the git user may not reach it", path, dir, di.Mode().Perm()))
			break
		}
		if dir == "/" || dir == "." {
			break
		}
	}
	return out
}

// Unit is the rendezvous's hardened systemd unit; install writes it, and
// the Debian package ships it (`install server --print-unit`).
func Unit(user, binary, listen, storeDir string) string {
	if listen == "" {
		listen = ":3478"
	}
	return fmt.Sprintf(`%s
[Unit]
Description=gcn-punch rendezvous: git push notifications over UDP
Documentation=man:gcn-punch(1)
After=network-online.target
Wants=network-online.target

[Service]
User=%s
ExecStart=%s rendezvous --listen %s --store %s
Restart=on-failure
RestartSec=2
UMask=0027
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=%s
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
`, unitMarker, user, binary, listen, storeDir, storeDir)
}

// Uninstall removes what Install added for this repository: its hook (the
// chained one is put back) and its served entry; when no repository is
// served any more, the git-shell command and the unit too. The store's
// data (keys, logs, records) is kept.
func (o ServerInstall) Uninstall() error {
	acct, repo, hooks, err := o.locate()
	if err != nil {
		return err
	}
	hookPath := filepath.Join(hooks, "post-receive")
	if _, ours := FileHasMarker(hookPath, hookMarker); ours {
		if err := os.Remove(hookPath); err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "removed %s\n", hookPath)
		if _, err := os.Stat(hookPath + chainedSuffix); err == nil {
			if err := os.Rename(hookPath+chainedSuffix, hookPath); err != nil {
				return err
			}
			fmt.Fprintf(o.Out, "restored the previous hook %s\n", hookPath)
		}
	}
	st := &store.Store{Dir: o.Store}
	served, _ := st.Served()
	real, _ := filepath.EvalSymlinks(repo)
	for id, p := range served {
		if p == real {
			st.Unserve(id)
			delete(served, id)
		}
	}
	if len(served) > 0 {
		fmt.Fprintf(o.Out, "%d other repositories still served: git-shell command and unit kept\n", len(served))
		return nil
	}
	hbPath := filepath.Join(acct.home, "git-shell-commands", "gcn-heartbeat")
	if _, ours := FileHasMarker(hbPath, heartbeatMarker); ours {
		os.Remove(hbPath)
		fmt.Fprintf(o.Out, "removed %s\n", hbPath)
	}
	up := o.UnitPath
	if up == "" {
		up = UnitPath
	}
	if _, ours := FileHasMarker(up, unitMarker); ours && os.Geteuid() == 0 {
		os.Remove(up)
		fmt.Fprintf(o.Out, "removed %s (run systemctl daemon-reload)\n", up)
	}
	fmt.Fprintf(o.Out, "the store %s and its data are kept\n", o.Store)
	return nil
}
