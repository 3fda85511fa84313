package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	flag "github.com/spf13/pflag"
)

// Configuration files. The daemon (and watch) read
// ~/.config/gcn-punch/daemon.toml and the rendezvous
// /etc/gcn-punch/rendezvous.toml when they exist, or the file --config
// names. A file is TOML whose keys are the command's long flag names and
// whose values are what the flag takes: strings ("@/etc/gcn-punch/server.pub",
// "25s"), numbers, booleans, and arrays for the flags that repeat (repo,
// repo-id). A flag on the command line wins over the file.

// daemonConfigPath is the daemon's default configuration file.
func daemonConfigPath() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "gcn-punch", "daemon.toml")
}

// rendezvousConfigPath is the rendezvous's default configuration file.
const rendezvousConfigPath = "/etc/gcn-punch/rendezvous.toml"

// configFlag adds --config to a command, with its default file.
func configFlag(fs *flag.FlagSet, def string) *string {
	return fs.String("config", def, "configuration file: TOML, its keys the long flag names (flags given here win)")
}

// applyConfig sets, from the file at path, every flag the command line did
// not set. A missing file is no error unless the user named it; an unknown
// key, or a value the flag refuses, is, with the file and the key.
func applyConfig(set *flag.FlagSet, path string) error {
	named := set.Changed("config")
	if path == "" {
		return nil
	}
	var settings map[string]any
	md, err := toml.DecodeFile(path, &settings)
	if errors.Is(err, fs.ErrNotExist) && !named {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := set.Lookup(k)
		if f == nil || k == "config" || k == "help" {
			return fmt.Errorf("%s: unknown setting %q: the settings are the command's flags (gcn-punch %s --help)", path, k, strings.TrimPrefix(set.Name(), "gcn-punch "))
		}
		if set.Changed(k) {
			continue // the command line wins
		}
		values, err := configValues(settings[k], md.Type(k))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, k, err)
		}
		if len(values) > 1 && !strings.Contains(f.Value.Type(), "Array") && !strings.Contains(f.Value.Type(), "Slice") {
			return fmt.Errorf("%s: %s takes one value, not a list", path, k)
		}
		for _, v := range values {
			if err := set.Set(k, v); err != nil {
				return fmt.Errorf("%s: %s = %q: %w", path, k, v, err)
			}
		}
	}
	return nil
}

// configValues turns a TOML value into the strings a flag takes.
func configValues(v any, tomlType string) ([]string, error) {
	switch x := v.(type) {
	case string:
		return []string{x}, nil
	case bool:
		return []string{strconv.FormatBool(x)}, nil
	case int64:
		return []string{strconv.FormatInt(x, 10)}, nil
	case float64:
		return []string{strconv.FormatFloat(x, 'f', -1, 64)}, nil
	case time.Duration:
		return []string{x.String()}, nil
	case []any:
		var out []string
		for _, e := range x {
			s, err := configValues(e, "")
			if err != nil || len(s) != 1 {
				return nil, fmt.Errorf("a list holds strings, numbers or booleans")
			}
			out = append(out, s...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("a %s is not a flag value (give a string, number, boolean or list)", tomlType)
}
