package main

import (
	"fmt"
	"os"
	"strings"

	flag "github.com/spf13/pflag"
)

// Help text. pflag's own listing names a flag's value by its Go type
// ("stringArray"), takes a backquoted word in the usage for that name, and
// shows "(default …)" even where the usage already says the default; this
// one gives each value a name a user reads (placeholders), never rewrites
// the usage, and shows at most one default. The manual page's OPTIONS are
// built from the same flag sets (manpage.go), so the two cannot disagree.

// placeholders name flag values; a flag not listed is named by its type.
var placeholders = map[string]string{
	"listen": "HOST:PORT", "alt-listen": "HOST:PORT", "server": "HOST:PORT", "reflexive": "IP:PORT",
	"store": "DIR", "state": "DIR", "profile-dir": "DIR",
	"repo": "PATH", "repo-id": "ID", "id": "HEX", "port": "N", "proof": "PROOF",
	"server-key": "HEX|@FILE", "exec": "'PROGRAM ARGS...'", "config": "FILE", "doc": "FILE", "cpuprofile": "FILE",
	"refs": "PATTERN", "fanout": "K", "metrics": "ADDR", "log-format": "FORMAT", "message": "TEXT",
	"user": "USER", "binary": "PATH", "unit": "PATH", "first-ip": "IP",
}

var typePlaceholders = map[string]string{
	"duration": "DURATION", "int": "N", "float64": "N", "intSlice": "N,N,...",
	"string": "VALUE", "stringArray": "VALUE",
}

// flagValueName is how help and the manual page name a flag's value; ""
// for a switch.
func flagValueName(f *flag.Flag) string {
	if f.Value.Type() == "bool" {
		return ""
	}
	if p, ok := placeholders[f.Name]; ok {
		return p
	}
	if p, ok := typePlaceholders[f.Value.Type()]; ok {
		return p
	}
	return strings.ToUpper(f.Value.Type())
}

// flagDefault is the default worth showing: none for a zero value, a
// switch, or a usage that says its default itself.
func flagDefault(f *flag.Flag) string {
	if f.Value.Type() == "bool" || strings.Contains(f.Usage, "default") {
		return ""
	}
	switch f.DefValue {
	case "", "0", "0s", "[]", "false":
		return ""
	}
	d := strings.Trim(f.DefValue, "[]")
	// Paths under the home directory read as ~/..., the same for everyone.
	if home, err := os.UserHomeDir(); err == nil && home != "/" && strings.HasPrefix(d, home+"/") {
		d = "~" + strings.TrimPrefix(d, home)
	}
	return d
}

// flagRepeats says whether a flag may be given more than once.
func flagRepeats(f *flag.Flag) bool { return strings.HasSuffix(f.Value.Type(), "Array") }

// flagHelp lists a command's flags, one or two lines each, in the order
// they were defined.
func flagHelp(fs *flag.FlagSet) string {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if f.Hidden {
			return
		}
		head := "      --" + f.Name
		if f.Shorthand != "" {
			head = "  -" + f.Shorthand + ", --" + f.Name
		}
		if v := flagValueName(f); v != "" {
			head += " " + v
		}
		usage := f.Usage
		if d := flagDefault(f); d != "" {
			usage += " (default " + d + ")"
		}
		if flagRepeats(f) && !strings.Contains(usage, "repeatable") {
			usage += " (repeatable)"
		}
		if len(head) < 30 {
			fmt.Fprintf(&b, "%-30s %s\n", head, usage)
		} else {
			fmt.Fprintf(&b, "%s\n%30s %s\n", head, "", usage)
		}
	})
	return b.String()
}

// printHelp is --help: the command's flags on stdout.
func printHelp(fs *flag.FlagSet) {
	fmt.Fprintf(os.Stdout, "usage: %s [flags]\n\nflags:\n%s", fs.Name(), flagHelp(fs))
}

// collectFlags, when set, receives the flag set of a command run with
// --help instead of printing it, and the command stops there (with the
// panic helpCollected): how the manual page learns every command's flags.
var collectFlags func(*flag.FlagSet)

type helpCollected struct{}

// onHelp runs when a command's flags meet --help (pflag calls it as Usage).
func onHelp(fs *flag.FlagSet) {
	if collectFlags != nil {
		collectFlags(fs)
		panic(helpCollected{})
	}
}
