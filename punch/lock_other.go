//go:build !unix

package punch

import "os"

// lockFile does nothing where flock is missing: the control socket's check
// (another daemon answering there) is the only guard.
func lockFile(*os.File) error { return nil }
