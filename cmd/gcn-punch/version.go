package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time (make build: -X main.version=$(git describe));
// empty, it comes from the module's build information.
var version string

// versionString is what `gcn-punch version` prints: the version, and the
// Go release and platform it was built for.
func versionString() string {
	return fmt.Sprintf("gcn-punch %s (%s, %s/%s)", shortVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// shortVersion is the build's version alone, as start lines log it.
func shortVersion() string {
	v := version
	if v == "" {
		v = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			v = bi.Main.Version
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					if len(s.Value) > 12 {
						v += " " + s.Value[:12]
					}
				case "vcs.modified":
					if s.Value == "true" {
						v += "-dirty"
					}
				}
			}
		}
	}
	return v
}
