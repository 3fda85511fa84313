package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path"
	"strings"
	"unicode/utf8"
)

// Subscriptions with preferences. A daemon tells the rendezvous, once its
// address is validated, which refs of each repository it wants (the
// rendezvous then sends nothing for the others) and that it understands the
// chat-message notification (0x14). The rendezvous confirms with Subscribed;
// an old one rejects the unknown type, and the daemon then filters by itself
// and reads messages from its clone.

// Bounds of a subscription's preferences and of a notification's message.
const (
	MaxRefPatterns  = 8   // ref patterns per repository
	MaxRefPattern   = 200 // bytes of one pattern
	MaxAuthor       = 64  // bytes of the author's name in a notification
	MaxSubject      = 200 // bytes of the commit subject in a notification
	SubscribeDigest = 8   // bytes of the digest Subscribed confirms
)

// Subscribe flags: what the daemon understands.
const (
	SubscribeMessages = 1 << 0 // Notify 0x14 and Forward 0x16
	SubscribeNodes    = 1 << 1 // Nodes 0x17
	subscribeFlags    = SubscribeMessages | SubscribeNodes
)

// RepoPrefs is what a daemon wants of one repository.
type RepoPrefs struct {
	RepoID string
	// Refs are git glob patterns (see MatchRef); none means every ref.
	Refs []string
}

// Subscribe states a daemon's preferences; the rendezvous answers with
// Subscribed.
//
//	offset  size  field
//	0       1     type 0x13
//	1       1     flags: bit 0 = understands Notify with message (0x14) and Forward
//	              with message (0x16); bit 1 = understands Nodes (0x17); others zero
//	2       1     number of repositories N, 0..16
//	then, per repository:
//	        1     repository id length L, 1..100
//	        L     repository id
//	        1     number of ref patterns P, 0..8 (0: every ref)
//	        then P × (1 length, 1..200; the pattern)
type Subscribe struct {
	Flags byte
	Repos []RepoPrefs
}

// TypeSubscribe and its answer, TypeSubscribed (0x14 is the Notify with a
// message).
const (
	TypeSubscribe  Type = 0x13 // client → rendezvous: ref filters, features
	TypeNotifyMsg  Type = 0x14 // rendezvous → client: Notify with its chat message
	TypeSubscribed Type = 0x15 // rendezvous → client: the Subscribe was taken
	TypeNodes      Type = 0x17 // rendezvous → client: every node of its cluster
)

// MaxNodes bounds the nodes a Nodes message lists.
const MaxNodes = 16

// Nodes lists the addresses of every rendezvous node of a cluster (the
// sender among them), which share one identity: a daemon whose node stops
// answering moves to another.
//
//	offset  size  field
//	0       1     type 0x17
//	1       1     number of addresses N, 1..16
//	then N × address: 1 length (4 or 16), the IP, 2 port
type Nodes struct {
	Addrs []netip.AddrPort
}

// AppendPlaintext implements Message.
func (m *Nodes) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeNodes), byte(len(m.Addrs)))
	for _, a := range m.Addrs {
		b = appendAddrPort(b, a)
	}
	return b
}

func parseNodes(r *reader) *Nodes {
	m := &Nodes{}
	n := int(r.u8())
	if r.err == nil && (n == 0 || n > MaxNodes) {
		r.fail(fmt.Errorf("%w: %d nodes", ErrField, n))
	}
	for i := 0; i < n && r.err == nil; i++ {
		m.Addrs = append(m.Addrs, r.candidateAddr())
	}
	return m
}

// AppendPlaintext implements Message.
func (m *Subscribe) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeSubscribe), m.Flags, byte(len(m.Repos)))
	for _, r := range m.Repos {
		b = appendRepoID(b, r.RepoID)
		b = append(b, byte(len(r.Refs)))
		for _, p := range r.Refs {
			b = append(b, byte(len(p)))
			b = append(b, p...)
		}
	}
	return b
}

// Digest identifies the Subscribe, for its confirmation.
func (m *Subscribe) Digest() (d [SubscribeDigest]byte) {
	sum := sha256.Sum256(m.AppendPlaintext(nil))
	copy(d[:], sum[:])
	return d
}

// Validate checks that every field can be encoded.
func (m *Subscribe) Validate() error {
	if m.Flags&^subscribeFlags != 0 {
		return fmt.Errorf("%w: subscribe flags %#x", ErrField, m.Flags)
	}
	if len(m.Repos) > MaxSubs {
		return fmt.Errorf("%w: %d repositories, at most %d", ErrField, len(m.Repos), MaxSubs)
	}
	for _, r := range m.Repos {
		if err := ValidRepoID(r.RepoID); err != nil {
			return err
		}
		if len(r.Refs) > MaxRefPatterns {
			return fmt.Errorf("%w: %d ref patterns for %s, at most %d", ErrField, len(r.Refs), r.RepoID, MaxRefPatterns)
		}
		for _, p := range r.Refs {
			if err := ValidRefPattern(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func parseSubscribe(r *reader) *Subscribe {
	m := &Subscribe{Flags: r.u8()}
	n := int(r.u8())
	if r.err == nil && n > MaxSubs {
		r.fail(fmt.Errorf("%w: subscribe with %d repositories", ErrField, n))
	}
	for i := 0; i < n && r.err == nil; i++ {
		rp := RepoPrefs{RepoID: r.repoID()}
		np := int(r.u8())
		if r.err == nil && np > MaxRefPatterns {
			r.fail(fmt.Errorf("%w: %d ref patterns", ErrField, np))
		}
		for j := 0; j < np && r.err == nil; j++ {
			p := string(r.take(int(r.u8())))
			if r.err == nil {
				if err := ValidRefPattern(p); err != nil {
					r.fail(err)
				}
			}
			rp.Refs = append(rp.Refs, p)
		}
		m.Repos = append(m.Repos, rp)
	}
	if r.err == nil && m.Flags&^subscribeFlags != 0 {
		r.fail(fmt.Errorf("%w: subscribe flags %#x", ErrField, m.Flags))
	}
	return m
}

// Subscribed confirms a Subscribe: the rendezvous applies it from now on.
//
//	offset  size  field
//	0       1     type 0x15
//	1       8     the Subscribe's digest: the first 8 bytes of SHA-256 of its plaintext
type Subscribed struct {
	Digest [SubscribeDigest]byte
}

// AppendPlaintext implements Message.
func (m *Subscribed) AppendPlaintext(b []byte) []byte {
	return append(append(b, byte(TypeSubscribed)), m.Digest[:]...)
}

// ValidRefPattern reports whether p is a ref pattern: like a ref (it starts
// with "refs/", no spaces or control characters), at most 200 bytes, and
// its glob syntax is sound.
func ValidRefPattern(p string) error {
	if !strings.HasPrefix(p, "refs/") || len(p) > MaxRefPattern {
		return fmt.Errorf("%w: pattern %q must start with refs/ and be at most %d bytes (e.g. refs/heads/main, refs/heads/release/*)", ErrRef, p, MaxRefPattern)
	}
	for _, c := range []byte(p) {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: pattern %q contains a control character or space", ErrRef, p)
		}
	}
	for _, part := range strings.Split(p, "/") {
		if _, err := path.Match(part, ""); err != nil {
			return fmt.Errorf("%w: pattern %q: bad glob in %q", ErrRef, p, part)
		}
	}
	return nil
}

// MatchRef reports whether ref matches the pattern, with git's glob rules
// for refs (wildmatch with WM_PATHNAME, as `git for-each-ref` uses them):
// '*', '?' and '[...]' match within one '/'-separated component, a
// component "**" matches any number of components, and a pattern without
// glob characters matches that ref and every ref beneath it
// ("refs/heads" matches "refs/heads/main").
func MatchRef(pattern, ref string) bool {
	if !strings.ContainsAny(pattern, "*?[\\") {
		p := strings.TrimSuffix(pattern, "/")
		return ref == p || strings.HasPrefix(ref, p+"/")
	}
	return matchParts(strings.Split(pattern, "/"), strings.Split(ref, "/"))
}

func matchParts(pat, ref []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			// Zero or more components; the recursion is bounded by the
			// number of components (at most 100 in a 200-byte pattern).
			for i := 0; i <= len(ref); i++ {
				if matchParts(pat[1:], ref[i:]) {
					return true
				}
			}
			return false
		}
		if len(ref) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], ref[0]); !ok {
			return false
		}
		pat, ref = pat[1:], ref[1:]
	}
	return len(ref) == 0
}

// MatchAny reports whether ref matches one of the patterns, or there are
// none (every ref).
func MatchAny(patterns []string, ref string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if MatchRef(p, ref) {
			return true
		}
	}
	return false
}

// TrimText makes s one line that fits a notification's message field:
// control characters (tabs and line ends among them) become spaces,
// invalid UTF-8 is replaced, and a longer text is cut between characters
// to at most max bytes, marked with an ellipsis where there is room.
func TrimText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) <= max {
		return s
	}
	const ellipsis = "…"
	mark, cut := ellipsis, max-len(ellipsis)
	if cut <= 0 {
		mark, cut = "", max
	}
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// validText reports whether s could have come from TrimText(s, max).
func validText(s string, max int) bool {
	return len(s) <= max && utf8.ValidString(s) && TrimText(s, max) == s
}

// append appends the chat message's fields, as types 0x14 and 0x16 end.
func (c *Chat) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, c.Count)
	b = append(b, byte(len(c.Author)))
	b = append(b, c.Author...)
	b = append(b, byte(len(c.Subject)))
	return append(b, c.Subject...)
}

// fit shortens the message by over bytes if it can, the subject first.
func (c *Chat) fit(over int) {
	if over <= 0 {
		return
	}
	was := len(c.Subject)
	c.Subject = TrimText(c.Subject, max(0, was-over))
	if over -= was - len(c.Subject); over > 0 {
		c.Author = TrimText(c.Author, max(0, len(c.Author)-over))
	}
}

func (r *reader) chat(c *Chat) {
	c.Count = r.u32()
	c.Author = string(r.take(int(r.u8())))
	c.Subject = string(r.take(int(r.u8())))
	if r.err == nil && (!validText(c.Author, MaxAuthor) || !validText(c.Subject, MaxSubject)) {
		r.fail(fmt.Errorf("%w: message author or subject not clean UTF-8 within bounds", ErrField))
	}
}

// appendOIDs appends the object id length and both ids.
func appendOIDs(b []byte, old, new string) []byte {
	b = append(b, byte(len(old)/2))
	b, _ = hex.AppendDecode(b, []byte(old))
	b, _ = hex.AppendDecode(b, []byte(new))
	return b
}
