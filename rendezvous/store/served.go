package store

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// Served repositories: served/<dir name of the id> holds the repository's
// real path and a newline. `gcn-punch install server` writes it; SSH
// registration reads it to map a clone's URL path to a repository id.

func (s *Store) servedDir() string { return filepath.Join(s.Dir, "served") }

// Served returns the repositories this store serves: id → real path.
func (s *Store) Served() (map[string]string, error) {
	ents, err := os.ReadDir(s.servedDir())
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, e := range ents {
		b, err := readSmall(filepath.Join(s.servedDir(), e.Name()), maxSmallFile)
		if err != nil {
			continue
		}
		id := repoIDFromDir(e.Name())
		if wire.ValidRepoID(id) == nil {
			m[id] = strings.TrimSuffix(string(b), "\n")
		}
	}
	return m, nil
}

// Serves reports whether the store serves the repository id: it is in the
// served list, or there is no list (a store set up by hand, with no
// `gcn-punch install server`, serves every repository that pushes to it).
// With a list, the others are named in the error's hint.
func (s *Store) Serves(id string) (bool, []string) {
	if _, err := os.Stat(filepath.Join(s.servedDir(), repoDirName(id))); err == nil {
		return true, nil
	}
	served, err := s.Served()
	if err != nil || len(served) == 0 {
		return true, nil
	}
	return false, slices.Sorted(maps.Keys(served))
}

// Serve records that this store serves the repository at path under id.
func (s *Store) Serve(id, path string) error {
	if err := wire.ValidRepoID(id); err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.servedDir(), 0o750); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.servedDir(), repoDirName(id)), []byte(real+"\n"), 0o640)
}

// Unserve removes a repository from the served list.
func (s *Store) Unserve(id string) error {
	err := os.Remove(filepath.Join(s.servedDir(), repoDirName(id)))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ServedRepo maps a repository path as a client's URL names it ("chat.git",
// "~/chat.git", "/srv/git/chat.git"; relative paths from home) to the id of
// a repository this store serves. It refuses "..", and anything not served.
func (s *Store) ServedRepo(path, home string) (string, error) {
	if path == "" || len(path) > 4096 || strings.ContainsAny(path, "\x00\n") {
		return "", fmt.Errorf("repository path is empty, too long or has control characters")
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == ".." {
			return "", fmt.Errorf("repository path %q contains '..'", path)
		}
	}
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		path = rest
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(home, path)
	}
	served, err := s.Served()
	if err != nil {
		return "", err
	}
	for _, cand := range []string{path, path + ".git", filepath.Join(path, ".git")} {
		real, err := filepath.EvalSymlinks(filepath.Clean(cand))
		if err != nil {
			continue
		}
		for id, p := range served {
			if p == real {
				return id, nil
			}
		}
	}
	return "", fmt.Errorf("repository %q is not served here", path)
}
