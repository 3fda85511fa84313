package punch

import "github.com/gitchat/gcn-punch/wire"

// SetForwardHook makes a daemon hostile, for tests: what it forwards to its
// children passes through f first.
func SetForwardHook(d *Daemon, f func([]*wire.Forward) []*wire.Forward) { d.forwardHook = f }

// ICEConsent exposes iceConsent to tests.
var ICEConsent = iceConsent

// SetGatherHook makes a daemon hostile to its children's acks, for tests:
// what it passes on to the rendezvous goes through f first.
func SetGatherHook(d *Daemon, f func([][]byte) [][]byte) { d.gatherHook = f }
