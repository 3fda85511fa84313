package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// Owners: who registered a client. Registration over SSH records the SSH
// account (and, where sshd exposes it, the key's fingerprint) in
// owners/<64 hex id>: one line, "USER" or "USER SHA256:...". `status`
// shows it, and `revoke` finds a person's clients by it.

// maxOwner bounds an owner line: an account name and a fingerprint.
const maxOwner = 200

func (s *Store) ownerPath(id wire.Key) string { return filepath.Join(s.Dir, "owners", id.String()) }

// SetOwner records who registered a client.
func (s *Store) SetOwner(id wire.Key, owner string) error {
	owner = strings.Join(strings.Fields(owner), " ")
	if owner == "" || len(owner) > maxOwner {
		return fmt.Errorf("store: owner %q: want a name of 1 to %d characters", owner, maxOwner)
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "owners"), 0o750); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.ownerPath(id), []byte(owner+"\n"), 0o640)
}

// Owner is who registered a client ("" when unknown).
func (s *Store) Owner(id wire.Key) string {
	b, err := readSmall(s.ownerPath(id), maxSmallFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ClientsOf lists the clients whose owner's account is user.
func (s *Store) ClientsOf(user string) ([]wire.Key, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "owners"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []wire.Key
	for _, e := range ents {
		id, err := wire.ParseKey(e.Name())
		if err != nil {
			continue
		}
		if name, _, _ := strings.Cut(s.Owner(id), " "); name == user {
			out = append(out, id)
		}
	}
	return out, nil
}

// Revoke ends a client's access: every authorisation, its record and its
// owner line are removed, so that a rendezvous reading the store refuses
// it (a running one is told as well: `gcn-punch revoke`). It reports the
// repositories the client was authorised for.
func (s *Store) Revoke(id wire.Key) (repos []string, err error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "auth"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		p := filepath.Join(s.Dir, "auth", e.Name(), id.String())
		if err := os.Remove(p); err == nil {
			repos = append(repos, repoIDFromDir(e.Name()))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return repos, err
		}
	}
	for _, p := range []string{s.clientPath(id), s.ownerPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return repos, err
		}
	}
	return repos, nil
}
