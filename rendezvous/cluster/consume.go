package cluster

import (
	"context"
	"encoding/hex"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Supervision of the event consumer and of the authorisations watcher.
// nats.go's ordered consumer replaces itself when it misses two of its 5 s
// heartbeats (10 s) or its connection comes back, and retries its own
// re-creation; but a terminal answer from the server, or a re-creation
// that fails in a way it does not retry, leaves it silent for good, and in
// the lab it once stayed silent for the whole minute a test waited after a
// NATS server's SIGKILL. So a node also checks the stream itself. The
// authorisations watcher is an ordered consumer of the bucket's stream
// too, and a silent one would keep a revoked client's access on this
// node, so it is checked the same way.
const (
	// consumeCheck is how often a node compares what it has taken with
	// the stream's last sequence number: one lookup per 5 s.
	consumeCheck = 5 * time.Second
	// consumeStall is how long the consumer may stay behind the stream
	// without taking anything before it is replaced by a new one starting
	// where it stopped: the ordered consumer's own recovery (10 s) and
	// one more check, so that the node steps in only when that failed.
	consumeStall = 20 * time.Second
)

// consumeWatch is the supervision's timing (tests shorten it), and
// drop, for tests, makes the consumer or watcher of a generation ignore a
// message (by its stream sequence number) as a silent one would.
type consumeWatch struct {
	every, stall time.Duration
	drop         func(generation int, seq uint64) bool
}

// stalled is the supervision's one rule: a follower that has taken the
// stream up to sequence number taken, where the stream's last is last, is
// stalled once it has been behind for the stall bound without taking
// anything (progress: when it last took something, or was seen caught up;
// reset here when it is).
func (cw consumeWatch) stalled(last, taken uint64, progress *time.Time) bool {
	if last <= taken {
		*progress = time.Now()
		return false
	}
	return time.Since(*progress) >= cw.stall
}

// ConsumeEvents calls fn with every event in the stream, from the first it
// retains, then with each new one, in the stream's order, until ctx ends.
// A malformed message is logged and skipped. A consumer that stays behind
// the stream without taking anything for consumeStall, or ends, is
// replaced by a new one that starts where it stopped: fn sees each event
// once, in order, across the replacement.
func (c *Cluster) ConsumeEvents(ctx context.Context, fn func(repo string, e store.Event)) error {
	events, _, _, err := c.ready()
	if err != nil {
		return err
	}
	t := &taker{fn: fn, next: 1, progress: time.Now(), log: c.log}
	for generation := 0; ; generation++ {
		cc, err := c.startConsumer(ctx, t, generation)
		if ctx.Err() != nil {
			if cc != nil {
				cc.Stop()
			}
			return nil
		}
		if err != nil {
			c.log.Warn("cluster: starting the event consumer", "err", err, "retry_in", c.watch.every)
		}
		stalled := c.supervise(ctx, events, t, cc)
		if cc != nil {
			cc.Stop()
		}
		if !stalled {
			return nil
		}
		if cc != nil {
			c.log.Warn("cluster: the event consumer stopped taking events; starting a new one where it stopped", "next_seq", t.at())
		}
	}
}

// taker hands the stream's messages to fn in order, once each, whichever
// consumer they come from.
type taker struct {
	fn       func(repo string, e store.Event)
	log      *slog.Logger
	mu       sync.Mutex
	next     uint64    // the stream sequence number of the next message to take
	progress time.Time // when next last moved, or the consumer was last seen caught up
}

func (t *taker) at() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.next
}

// take hands one message on, unless an earlier consumer already did.
// Every consumer delivers the stream in order from where it started, and a
// new one starts at next, so what take passes on has no gap and no repeat.
func (t *taker) take(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if meta.Sequence.Stream < t.next {
		return // a replaced consumer's late copy
	}
	t.next = meta.Sequence.Stream + 1
	t.progress = time.Now()
	repo, e, err := decodeEvent(msg.Data())
	if err != nil {
		t.log.Warn("skipping a malformed event in the stream", "subject", msg.Subject(), "err", err)
		return
	}
	t.fn(repo, e)
}

// startConsumer starts an ordered consumer of every repository's events
// from t's next sequence number.
func (c *Cluster) startConsumer(ctx context.Context, t *taker, generation int) (jetstream.ConsumeContext, error) {
	cons, err := c.js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{eventsSubject + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    t.at(),
	})
	if err != nil {
		return nil, err
	}
	handler := t.take
	if drop := c.watch.drop; drop != nil {
		handler = func(msg jetstream.Msg) {
			if meta, err := msg.Metadata(); err == nil && drop(generation, meta.Sequence.Stream) {
				return
			}
			t.take(msg)
		}
	}
	t.mu.Lock()
	t.progress = time.Now()
	t.mu.Unlock()
	return cons.Consume(handler, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		c.log.Info("cluster: the event consumer", "err", err)
	}))
}

// supervise waits until ctx ends (false) or the consumer cc must be
// replaced (true): it ended, it never started (nil), or it has stayed
// behind the stream without taking anything for the stall bound.
func (c *Cluster) supervise(ctx context.Context, events jetstream.Stream, t *taker, cc jetstream.ConsumeContext) bool {
	tick := time.NewTicker(c.watch.every)
	defer tick.Stop()
	var closed <-chan struct{}
	if cc != nil {
		closed = cc.Closed()
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-closed:
			return ctx.Err() == nil
		case <-tick.C:
		}
		if cc == nil {
			return true
		}
		ictx, cancel := context.WithTimeout(ctx, opTimeout)
		info, err := events.Info(ictx)
		cancel()
		if err != nil {
			continue // the stream cannot say now; neither can the check
		}
		t.mu.Lock()
		stalled := c.watch.stalled(info.State.LastSeq, t.next-1, &t.progress)
		t.mu.Unlock()
		if stalled {
			return true
		}
	}
}

// WatchAuth calls fn with every authorisation the bucket holds and then
// with each change, until ctx ends. It is supervised as ConsumeEvents is:
// a watcher that stays behind the bucket's last revision without taking
// anything for consumeStall, or ends, is replaced by a new one, which
// hands fn every authorisation the bucket holds again, and the end of
// every one deleted meanwhile (its delete marker is the key's last
// revision), so that a revocation still reaches this node.
func (c *Cluster) WatchAuth(ctx context.Context, fn func(AuthChange)) error {
	_, auth, _, err := c.ready()
	if err != nil {
		return err
	}
	var seen uint64 // the highest revision taken
	for generation := 0; ; generation++ {
		w, err := auth.WatchAll(ctx)
		if ctx.Err() != nil {
			if w != nil {
				w.Stop()
			}
			return nil
		}
		if err != nil {
			c.log.Warn("cluster: watching the authorisations", "err", err, "retry_in", c.watch.every)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(c.watch.every):
			}
			continue
		}
		stalled := c.followAuth(ctx, auth, w, generation, &seen, fn)
		w.Stop()
		if !stalled {
			return nil
		}
		c.log.Warn("cluster: the authorisations watcher stopped taking changes; starting a new one", "revision", seen)
	}
}

// followAuth hands w's changes to fn until ctx ends (false) or w must be
// replaced (true): it ended, or it stayed behind the bucket without taking
// anything for the stall bound.
func (c *Cluster) followAuth(ctx context.Context, auth jetstream.KeyValue, w jetstream.KeyWatcher, generation int, seen *uint64, fn func(AuthChange)) bool {
	tick := time.NewTicker(c.watch.every)
	defer tick.Stop()
	progress := time.Now()
	for {
		select {
		case <-ctx.Done():
			return false
		case e, ok := <-w.Updates():
			if !ok {
				return ctx.Err() == nil
			}
			if e == nil {
				continue // the end of what the bucket held
			}
			if drop := c.watch.drop; drop != nil && drop(generation, e.Revision()) {
				continue
			}
			*seen = max(*seen, e.Revision())
			progress = time.Now()
			if ch, ok := decodeAuth(e); ok {
				fn(ch)
			}
		case <-tick.C:
			ictx, cancel := context.WithTimeout(ctx, opTimeout)
			st, err := auth.Status(ictx)
			cancel()
			bs, ok := st.(*jetstream.KeyValueBucketStatus)
			if err != nil || !ok || bs.StreamInfo() == nil {
				continue // the bucket cannot say now; neither can the check
			}
			if c.watch.stalled(bs.StreamInfo().State.LastSeq, *seen, &progress) {
				return true
			}
		}
	}
}

// decodeAuth reads an authorisation's change from the bucket's entry.
func decodeAuth(e jetstream.KeyValueEntry) (AuthChange, bool) {
	repoHex, keyHex, ok := strings.Cut(e.Key(), ".")
	repo, err1 := hex.DecodeString(repoHex)
	key, err2 := wire.ParseKey(keyHex)
	if !ok || err1 != nil || err2 != nil {
		return AuthChange{}, false
	}
	ch := AuthChange{Repo: string(repo), Key: key, Deleted: e.Operation() != jetstream.KeyValuePut}
	if !ch.Deleted {
		secs, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if err != nil {
			return AuthChange{}, false
		}
		ch.Expiry = time.Unix(secs, 0)
	}
	return ch, true
}
