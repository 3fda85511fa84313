package wire

// Cookies under load. A datagram from a key the rendezvous has not seen
// costs it a Curve25519 precomputation before it can open the box; a flood
// of random keys from forged source addresses could spend its whole budget
// for new keys and keep real newcomers out. When that budget is spent, the
// rendezvous answers a new key with a Busy reply, in clear and smaller than
// the request, carrying a cookie bound to the source address; the client
// puts the cookie in front of its next keepalive (Cookied), and a valid
// cookie lets it in through a budget that forged sources cannot reach,
// because they never see their cookies (WireGuard's cookie reply, with the
// same aim). Both are outside the box: the rendezvous checks the cookie
// before it spends anything on the key.

// Envelope version bytes of the two cleartext datagrams. Neither is a
// protocol version: a daemon that does not know them rejects both as
// ErrVersion, and the rendezvous falls back to dropping under load.
const (
	VersionBusy    = 0xb0
	VersionCookied = 0xb1
)

// BusyLen is the size of a Busy datagram.
const BusyLen = len(Magic) + 1 + CookieLen

// Busy tells a new key that the rendezvous is under load: it must echo the
// cookie, which shows it receives at its source address.
//
//	offset  size  field
//	0       3     magic "gcn"
//	3       1     0xb0
//	4       16    cookie (opaque to the client)
//
// AppendBusy appends a Busy datagram onto b.
func AppendBusy(b []byte, cookie [CookieLen]byte) []byte {
	return append(append(append(b, Magic...), VersionBusy), cookie[:]...)
}

// IsBusy reports whether b claims to be a Busy datagram.
func IsBusy(b []byte) bool { return LooksLikeGCN(b) && len(b) > len(Magic) && b[3] == VersionBusy }

// ParseBusy returns a Busy datagram's cookie.
func ParseBusy(b []byte) (cookie [CookieLen]byte, err error) {
	switch {
	case !IsBusy(b):
		return cookie, ErrNotGCN
	case len(b) < BusyLen:
		return cookie, ErrShort
	case len(b) > BusyLen:
		return cookie, ErrTrailing
	}
	copy(cookie[:], b[len(Magic)+1:])
	return cookie, nil
}

// CookiedOverhead is what the cookie adds in front of a sealed datagram.
const CookiedOverhead = len(Magic) + 1 + CookieLen

// Cookied is a sealed datagram (a keepalive) with the cookie of a Busy in
// front of it.
//
//	offset  size  field
//	0       3     magic "gcn"
//	3       1     0xb1
//	4       16    cookie, as the Busy carried it
//	20      n     the sealed datagram, envelope and all (version 1)
//
// AppendCookied appends the cookie and the sealed datagram onto b.
func AppendCookied(b []byte, cookie [CookieLen]byte, sealed []byte) []byte {
	b = append(append(append(b, Magic...), VersionCookied), cookie[:]...)
	return append(b, sealed...)
}

// IsCookied reports whether b claims to be a Cookied datagram.
func IsCookied(b []byte) bool {
	return LooksLikeGCN(b) && len(b) > len(Magic) && b[3] == VersionCookied
}

// ParseCookied returns the cookie and the sealed datagram behind it. It
// checks the inner envelope's header, not its box.
func ParseCookied(b []byte) (cookie [CookieLen]byte, sealed []byte, err error) {
	switch {
	case !IsCookied(b):
		return cookie, nil, ErrNotGCN
	case len(b) > MaxDatagram:
		return cookie, nil, ErrTooLarge
	case len(b) < CookiedOverhead:
		return cookie, nil, ErrShort
	}
	copy(cookie[:], b[len(Magic)+1:])
	sealed = b[CookiedOverhead:]
	if _, _, _, err := ParseHeader(sealed); err != nil {
		return cookie, nil, err
	}
	return cookie, sealed, nil
}
