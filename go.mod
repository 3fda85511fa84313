module github.com/gitchat/gcn-punch

go 1.26.8

require (
	github.com/godbus/dbus/v5 v5.2.4
	github.com/pion/stun/v2 v2.0.0
	github.com/spf13/pflag v1.1.0
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/pion/dtls/v2 v2.2.7 // indirect
	github.com/pion/logging v0.2.2 // indirect
	github.com/pion/transport/v2 v2.2.1 // indirect
	github.com/pion/transport/v3 v3.0.1 // indirect
)
