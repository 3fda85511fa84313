package punch

import "github.com/gitchat/gcn-punch/wire"

// SetForwardHook makes a daemon hostile, for tests: what it forwards to its
// children passes through f first.
func SetForwardHook(d *Daemon, f func([]*wire.Forward) []*wire.Forward) { d.forwardHook = f }

// ICEConsent exposes iceConsent to tests.
var ICEConsent = iceConsent
