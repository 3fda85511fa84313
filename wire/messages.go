package wire

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"
)

// Sub is one repository a client follows, as reported in a keepalive.
type Sub struct {
	RepoID string
	// Known is false when the client has never handled an event of this
	// repository; the rendezvous then starts it at the current head.
	Known   bool
	LastSeq uint64 // last sequence number the client handled
}

// Keepalive keeps the client's NAT mapping open and reports its position.
//
//	offset  size  field
//	0       1     type 0x01, or 0x07 for a quiet keepalive (no pong wanted);
//	              0x11 and 0x12 for the same on a dual-stack client's standby path
//	1       8     counter: strictly increasing per client key; replays are dropped
//	9       4     probe, milliseconds: 0, or "ping me after this long without a packet from me"
//	13      1     number of subscriptions, 1..16
//	then, per subscription:
//	        1     repository id length L, 1..100
//	        L     repository id
//	        1     state: 0 = fresh (no event handled yet), 1 = known
//	        8     last sequence number handled
//	then:   P     zero padding, so the plaintext is at least MinKeepalivePlaintext (177) bytes
//
// The padding makes the reply (a Pong) never larger than the keepalive, so the
// rendezvous cannot be used to amplify traffic.
type Keepalive struct {
	Counter uint64
	// ProbeMillis asks the rendezvous to send a Ping (with this keepalive's
	// counter) once the client has been silent this long: if it arrives, the
	// NAT mapping survives that much idle time. The daemon learns its NAT's
	// mapping lifetime this way.
	ProbeMillis uint32
	Subs        []Sub
	// Quiet says the client needs no pong (type 0x07). The rendezvous still
	// answers one whose answer is news to the client: a first contact, a
	// new address, a fresh or refused subscription, a probe request.
	// Answering only when asked halves the datagrams a keepalive costs
	// the server; the daemon asks at least every PongRefresh.
	Quiet bool
	// Standby (types 0x11 and 0x12) says this keepalive keeps a
	// dual-stack client's path on its other address family open: the
	// rendezvous keeps that address as the client's second path, proves
	// it like the first, and delivers there when the first stops
	// answering. It moves no subscription or position. A rendezvous older
	// than it drops it as an unknown type, which costs nothing.
	Standby bool
}

// PongRefresh is how long a client goes without asking for a pong: in
// between, its keepalives are quiet. Asking at least this often notices a
// path that silently died, and retries (1 s, 2 s, ...), well within the
// rendezvous's 5-minute client timeout, while a 25 s keepalive costs the
// server one datagram instead of two four times out of five.
const PongRefresh = 2 * time.Minute

// AppendPlaintext implements Message.
func (m *Keepalive) AppendPlaintext(b []byte) []byte {
	start := len(b)
	t := TypeKeepalive
	switch {
	case m.Standby && m.Quiet:
		t = TypeKeepaliveStandbyQuiet
	case m.Standby:
		t = TypeKeepaliveStandby
	case m.Quiet:
		t = TypeKeepaliveQuiet
	}
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint64(b, m.Counter)
	b = binary.BigEndian.AppendUint32(b, m.ProbeMillis)
	b = append(b, byte(len(m.Subs)))
	for _, s := range m.Subs {
		b = appendRepoID(b, s.RepoID)
		known := byte(0)
		if s.Known {
			known = 1
		}
		b = append(b, known)
		b = binary.BigEndian.AppendUint64(b, s.LastSeq)
	}
	for len(b)-start < MinKeepalivePlaintext {
		b = append(b, 0)
	}
	return b
}

func parseKeepalive(r *reader) *Keepalive {
	m := &Keepalive{Counter: r.u64(), ProbeMillis: r.u32()}
	n := int(r.u8())
	if r.err == nil && (n == 0 || n > MaxSubs) {
		r.fail(fmt.Errorf("%w: keepalive with %d subscriptions", ErrField, n))
	}
	for i := 0; i < n && r.err == nil; i++ {
		s := Sub{RepoID: r.repoID()}
		switch r.u8() {
		case 0:
		case 1:
			s.Known = true
		default:
			r.fail(fmt.Errorf("%w: subscription state", ErrField))
		}
		s.LastSeq = r.u64()
		m.Subs = append(m.Subs, s)
	}
	// The rest must be zero padding.
	for _, c := range r.b {
		if c != 0 {
			r.fail(ErrTrailing)
		}
	}
	r.b = nil
	return m
}

// Subscription status codes carried in a Pong.
const (
	StatusOK            byte = 0 // served; Position says from where
	StatusNotAuthorised byte = 1 // this key is not registered for this repository
	StatusUnknownRepo   byte = 2 // the rendezvous has no such repository
)

// SubStatus answers one subscription of a keepalive.
type SubStatus struct {
	Status byte
	// Position is the sequence number after which the rendezvous delivers
	// to this client. For a fresh subscription it is where the client
	// starts: the head of the log when it first subscribed.
	Position uint64
}

// Pong answers a keepalive.
//
//	offset  size  field
//	0       1     type 0x02
//	1       8     counter, echoed from the keepalive
//	9       1     observed address family length: 4 or 16
//	10      4|16  observed (reflexive) IP of the keepalive's source
//	..      2     observed port
//	..      4     keepalive advice in seconds (0: none)
//	..      1     number of statuses, as many as the keepalive's subscriptions, in order
//	then, per status:
//	        1     status: 0 ok, 1 not authorised, 2 unknown repository
//	        8     position: the rendezvous delivers the events after it
type Pong struct {
	Counter  uint64
	Observed netip.AddrPort
	Advice   uint32
	Statuses []SubStatus
}

// AppendPlaintext implements Message.
func (m *Pong) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypePong))
	b = binary.BigEndian.AppendUint64(b, m.Counter)
	b = appendAddrPort(b, m.Observed)
	b = binary.BigEndian.AppendUint32(b, m.Advice)
	b = append(b, byte(len(m.Statuses)))
	for _, s := range m.Statuses {
		b = append(b, s.Status)
		b = binary.BigEndian.AppendUint64(b, s.Position)
	}
	return b
}

func parsePong(r *reader) *Pong {
	m := &Pong{Counter: r.u64()}
	m.Observed = r.addrPort()
	m.Advice = r.u32()
	n := int(r.u8())
	if r.err == nil && n > MaxSubs {
		r.fail(fmt.Errorf("%w: pong with %d statuses", ErrField, n))
	}
	for i := 0; i < n && r.err == nil; i++ {
		s := SubStatus{Status: r.u8(), Position: r.u64()}
		if s.Status > StatusUnknownRepo {
			r.fail(fmt.Errorf("%w: status %d", ErrField, s.Status))
		}
		m.Statuses = append(m.Statuses, s)
	}
	return m
}

// Notify carries one ref update to one recipient.
//
//	offset  size  field
//	0       1     type 0x03
//	1       8     sequence number in the repository's log (1, 2, ...)
//	9       8     time of the push, Unix milliseconds (signed)
//	17      32    recipient's public key (must equal the key the box was opened with)
//	49      1     repository id length L, 1..100
//	50      L     repository id
//	..      2     ref length R, 6..1000
//	..      R     ref, e.g. "refs/heads/main"
//	..      1     object id length H: 20 (SHA-1) or 32 (SHA-256)
//	..      H     old object id (all zeros: the ref was created)
//	..      H     new object id (all zeros: the ref was deleted)
//
// Type 0x14, for a daemon whose Subscribe said it understands it, adds the
// chat message and the filtering of refs:
//
//	offset  size  field
//	0       1     type 0x14
//	1       8     sequence number
//	9       8     after: the recipient's previous event; the events between
//	              it and this one are not for it (filtered out). Seq-1 if none.
//	17      8     time of the push, Unix milliseconds (signed)
//	25      32    recipient's public key
//	57      ...   repository id, ref, object ids: as in type 0x03
//	..      4     commits the push added to the ref (0: unknown, or none)
//	..      1     author length A, 0..64
//	..      A     the tip commit's author name, UTF-8, no control characters
//	..      1     subject length S, 0..200
//	..      S     the tip commit's subject, the same rules
type Notify struct {
	Seq       uint64
	TimeMilli int64
	Recipient Key
	RepoID    string
	Ref       string
	Old, New  string // lowercase hex, 40 or 64 characters, both the same length
	// WithMessage selects type 0x14, which carries After and the message.
	WithMessage bool
	After       uint64 // type 0x14: the recipient's previous event
	Chat
}

// Chat is what a chat user reads in a notification: who pushed the tip
// commit and its subject, and how many commits the push added.
type Chat struct {
	Count   uint32
	Author  string // TrimText(name, MaxAuthor)
	Subject string // TrimText(subject, MaxSubject)
}

// NotifyMsgExtra is how many bytes type 0x14 adds to a Notify at most.
const NotifyMsgExtra = 8 + 4 + 1 + MaxAuthor + 1 + MaxSubject

// FitMessage shortens the message, the subject first, so that the
// notification fits one datagram; the event itself always fits.
func (m *Notify) FitMessage() {
	if m.WithMessage {
		m.Chat.fit(m.plaintextLen() - MaxPlaintext)
	}
}

// plaintextLen is len(m.AppendPlaintext(nil)), computed.
func (m *Notify) plaintextLen() int {
	n := 1 + 8 + 8 + KeyLen + 1 + len(m.RepoID) + 2 + len(m.Ref) + 1 + len(m.Old)
	if m.WithMessage {
		n += 8 + 4 + 1 + len(m.Author) + 1 + len(m.Subject)
	}
	return n
}

// AppendPlaintext implements Message. Validate first: it encodes what it is given.
func (m *Notify) AppendPlaintext(b []byte) []byte {
	t := TypeNotify
	if m.WithMessage {
		t = TypeNotifyMsg
	}
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	if m.WithMessage {
		b = binary.BigEndian.AppendUint64(b, m.After)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.TimeMilli))
	b = append(b, m.Recipient[:]...)
	b = appendRepoID(b, m.RepoID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Ref)))
	b = append(b, m.Ref...)
	b = appendOIDs(b, m.Old, m.New)
	if m.WithMessage {
		b = m.Chat.append(b)
	}
	return b
}

// Validate checks that the notification can be encoded and fits one datagram.
func (m *Notify) Validate() error {
	if err := m.validFields(); err != nil {
		return err
	}
	if n := len(m.AppendPlaintext(nil)); n > MaxPlaintext {
		return fmt.Errorf("%w: notification plaintext is %d bytes, at most %d fit", ErrMessageLarge, n, MaxPlaintext)
	}
	return nil
}

// validFields checks every field of the event, but not the size.
func (m *Notify) validFields() error {
	if err := ValidRepoID(m.RepoID); err != nil {
		return err
	}
	if err := ValidRef(m.Ref); err != nil {
		return err
	}
	if err := validOID(m.Old); err != nil {
		return err
	}
	if err := validOID(m.New); err != nil {
		return err
	}
	if len(m.Old) != len(m.New) {
		return fmt.Errorf("%w: old and new object ids differ in length", ErrField)
	}
	return nil
}

func validOID(s string) error {
	if len(s) != 40 && len(s) != 64 {
		return fmt.Errorf("%w: object id %q is not 40 or 64 hex characters", ErrField, s)
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("%w: object id %q is not lowercase hex", ErrField, s)
		}
	}
	return nil
}

func parseNotify(r *reader, withMessage bool) *Notify {
	m := &Notify{Seq: r.u64(), WithMessage: withMessage}
	if withMessage {
		m.After = r.u64()
	}
	m.TimeMilli, m.Recipient = int64(r.u64()), r.key()
	m.RepoID = r.repoID()
	m.Ref, m.Old, m.New = r.refAndOIDs()
	if withMessage {
		r.chat(&m.Chat)
	}
	if r.err == nil && m.Seq == 0 {
		r.fail(fmt.Errorf("%w: sequence number 0", ErrField))
	}
	if r.err == nil && withMessage && m.After >= m.Seq {
		r.fail(fmt.Errorf("%w: previous event %d not before %d", ErrField, m.After, m.Seq))
	}
	return m
}

// refAndOIDs reads a ref (u16 length) and two object ids (u8 length H,
// then H bytes each), as Notify and Forward carry them.
func (r *reader) refAndOIDs() (ref, old, new string) {
	ref = string(r.take(int(r.u16())))
	if r.err == nil {
		if err := ValidRef(ref); err != nil {
			r.fail(err)
		}
	}
	h := int(r.u8())
	if r.err == nil && h != 20 && h != 32 {
		r.fail(fmt.Errorf("%w: object id length %d", ErrField, h))
	}
	old = hex.EncodeToString(r.take(h))
	new = hex.EncodeToString(r.take(h))
	return ref, old, new
}

// Ack acknowledges, cumulatively, every event of a repository up to Seq.
//
//	offset  size  field
//	0       1     type 0x04
//	1       1     repository id length L, 1..100
//	2       L     repository id
//	2+L     8     highest sequence number handled, with all before it
//
// The rendezvous never answers an ack.
type Ack struct {
	RepoID string
	Seq    uint64
}

// AppendPlaintext implements Message.
func (m *Ack) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeAck))
	b = appendRepoID(b, m.RepoID)
	return binary.BigEndian.AppendUint64(b, m.Seq)
}

func parseAck(r *reader) *Ack {
	var a Ack
	parseAckInto(r, &a)
	return &a
}

func parseAckInto(r *reader, a *Ack) {
	a.RepoID, a.Seq = r.repoID(), r.u64()
}

// Resync tells a client that events it had not handled fell out of retention.
//
//	offset  size  field
//	0       1     type 0x05
//	1       8     head sequence number: the client is now at this position
//	9       8     oldest sequence number still in the log
//	17      8     time, Unix milliseconds
//	25      32    recipient's public key
//	57      1     repository id length L, 1..100
//	58      L     repository id
//
// The client acks HeadSeq and should pull: a fetch brings everything it missed.
type Resync struct {
	HeadSeq   uint64
	FirstSeq  uint64
	TimeMilli int64
	Recipient Key
	RepoID    string
}

// AppendPlaintext implements Message.
func (m *Resync) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeResync))
	b = binary.BigEndian.AppendUint64(b, m.HeadSeq)
	b = binary.BigEndian.AppendUint64(b, m.FirstSeq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.TimeMilli))
	b = append(b, m.Recipient[:]...)
	return appendRepoID(b, m.RepoID)
}

func parseResync(r *reader) *Resync {
	m := &Resync{HeadSeq: r.u64(), FirstSeq: r.u64(), TimeMilli: int64(r.u64()), Recipient: r.key()}
	m.RepoID = r.repoID()
	return m
}

// Ping asks a client to send a keepalive now: the rendezvous sends it after a
// restart, so that clients report their position without waiting. It also
// answers a keepalive's probe request, carrying that keepalive's counter.
//
//	offset  size  field
//	0       1     type 0x06
//	1       8     counter (a probe's: the counter of the keepalive that asked)
type Ping struct {
	Counter uint64
}

// AppendPlaintext implements Message.
func (m *Ping) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypePing))
	return binary.BigEndian.AppendUint64(b, m.Counter)
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		a := ip.As4()
		b = append(b, a[:]...)
	} else {
		b = append(b, 16)
		a := ip.As16()
		b = append(b, a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func (r *reader) addrPort() netip.AddrPort {
	n := int(r.u8())
	if r.err == nil && n != 4 && n != 16 {
		r.fail(fmt.Errorf("%w: address length %d", ErrField, n))
		return netip.AddrPort{}
	}
	ipb := r.take(n)
	port := r.u16()
	if r.err != nil {
		return netip.AddrPort{}
	}
	ip, _ := netip.AddrFromSlice(ipb)
	return netip.AddrPortFrom(ip, port)
}
