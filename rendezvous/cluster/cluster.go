// Package cluster shares rendezvous nodes' events, authorisations and membership through NATS JetStream.
package cluster

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Names in JetStream. Subjects and keys carry repository ids in hex: an id
// may hold '.', which NATS reads as a token separator.
const (
	StreamName    = "GCN_EVENTS"
	eventsSubject = "gcn.events." // + hex(repository id)
	AuthBucket    = "gcn_auth"    // hex(repo) "." hex(client key) → expiry, Unix seconds
	NodesBucket   = "gcn_nodes"   // node name → NodeInfo (JSON)
)

// Timing.
const (
	// DedupWindow is how long JetStream remembers a published event's id
	// (repository and sequence number) and drops a second copy. A publisher
	// that restarts later finds its place from the stream's last message of
	// each repository instead.
	DedupWindow = 2 * time.Minute
	// RetainPerRepo is how many events the stream keeps per repository:
	// what an event log holds just before its compaction (2 ×
	// store.DefaultRetain), so a node can catch a client up as far as the
	// log could.
	RetainPerRepo = 2 * store.DefaultRetain
	// NodeRefresh is how often a node renews its membership entry, and
	// NodeTTL how long the entry outlives the last renewal: three missed
	// renewals, and the node is gone from every list.
	NodeRefresh = 10 * time.Second
	NodeTTL     = 3 * NodeRefresh
	// setupTry bounds one attempt at creating the stream and buckets: until
	// a cluster has elected its JetStream leader (2–3 s after start) they
	// time out, and setup tries again.
	setupTry = 3 * time.Second
	// opTimeout bounds one publish or lookup.
	opTimeout = 5 * time.Second
)

// ErrNotReady is returned before the stream and buckets are set up (the
// cluster is unreachable, or has no JetStream leader yet).
var ErrNotReady = errors.New("cluster: not set up yet (unreachable, or electing its leader)")

// Options configure a connection. The first four are what the store's
// cluster.json holds for the hook (store.ClusterFile).
type Options struct {
	URLs     string `json:"urls"`               // comma-separated nats:// URLs
	Creds    string `json:"creds,omitempty"`    // a NATS credentials file, or ""
	User     string `json:"user,omitempty"`     // user and password, or a token in User alone, or ""
	Password string `json:"password,omitempty"` //
	Name     string `json:"-"`                  // this node's name in the cluster
	// Replicas of the stream and buckets; 0: as many servers as the
	// cluster has, at most 3.
	Replicas int          `json:"-"`
	Logger   *slog.Logger `json:"-"`
}

// Cluster is one node's connection.
type Cluster struct {
	o      Options
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	mu     sync.Mutex
	events jetstream.Stream
	auth   jetstream.KeyValue
	nodes  jetstream.KeyValue
	// watch is how the event consumer is supervised (consume.go).
	watch consumeWatch
}

// Connect opens the connection. It does not wait for the cluster: an
// unreachable one is retried in the background, and Setup says when the
// stream and buckets are there.
func Connect(o Options) (*Cluster, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name("gcn-punch rendezvous " + o.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// A node reconnects within a second of a NATS server coming back.
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			o.Logger.Warn("cluster connection lost; events are delivered from the local log meanwhile and published when it is back", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			o.Logger.Info("cluster connection back", "server", nc.ConnectedUrlRedacted())
		}),
	}
	opts = append(opts, o.auth()...)
	nc, err := nats.Connect(o.URLs, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return &Cluster{o: o, nc: nc, js: js, log: o.Logger, watch: consumeWatch{every: consumeCheck, stall: consumeStall}}, nil
}

// Close ends the connection.
func (c *Cluster) Close() { c.nc.Close() }

// Name is this node's name.
func (c *Cluster) Name() string { return c.o.Name }

func (c *Cluster) replicas() int {
	if c.o.Replicas > 0 {
		return c.o.Replicas
	}
	return min(3, max(1, len(c.nc.Servers())))
}

// Setup creates (or finds) the stream and buckets, trying until ctx ends.
func (c *Cluster) Setup(ctx context.Context) error {
	for {
		err := c.setupOnce(ctx)
		if err == nil {
			return nil
		}
		c.log.Debug("cluster setup", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (c *Cluster) setupOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, setupTry)
	defer cancel()
	r := c.replicas()
	events, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              StreamName,
		Description:       "gcn-punch events, one subject per repository",
		Subjects:          []string{eventsSubject + ">"},
		Storage:           jetstream.FileStorage,
		Replicas:          r,
		Duplicates:        DedupWindow,
		MaxMsgsPerSubject: RetainPerRepo,
		Discard:           jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	auth, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: AuthBucket, Description: "gcn-punch authorisations", Replicas: r, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("bucket %s: %w", AuthBucket, err)
	}
	nodes, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: NodesBucket, Description: "gcn-punch rendezvous nodes", Replicas: r, TTL: NodeTTL, Storage: jetstream.MemoryStorage})
	if err != nil {
		return fmt.Errorf("bucket %s: %w", NodesBucket, err)
	}
	c.mu.Lock()
	c.events, c.auth, c.nodes = events, auth, nodes
	c.mu.Unlock()
	return nil
}

func (c *Cluster) ready() (jetstream.Stream, jetstream.KeyValue, jetstream.KeyValue, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.events == nil {
		return nil, nil, nil, ErrNotReady
	}
	return c.events, c.auth, c.nodes, nil
}

// eventMsg is an event as the stream carries it.
type eventMsg struct {
	Repo      string `json:"repo"`
	Seq       uint64 `json:"seq"`
	TimeMilli int64  `json:"time_ms"`
	Old       string `json:"old"`
	New       string `json:"new"`
	Ref       string `json:"ref"`
	Author    string `json:"author,omitempty"`
	Subject   string `json:"subject,omitempty"`
	Count     uint32 `json:"count,omitempty"`
}

func subjectOf(repo string) string { return eventsSubject + hex.EncodeToString([]byte(repo)) }

// Publish records one event in the stream, once: a second publish of the
// same repository and sequence number within DedupWindow is dropped.
func (c *Cluster) Publish(ctx context.Context, repo string, e store.Event) error {
	if _, _, _, err := c.ready(); err != nil {
		return err
	}
	return c.publish(ctx, repo, e)
}

// PublishNow connects, publishes a push's events in order and closes, all
// within budget, failing at once where a rendezvous would retry: the
// hook's way, so that a push reaches the stream before the hook returns
// even when the rendezvous beside the store is down. What it cannot
// publish, that rendezvous publishes from the log later.
func PublishNow(o Options, repo string, evs []store.Event, budget time.Duration) error {
	deadline := time.Now().Add(budget)
	opts := []nats.Option{nats.Name("gcn-punch hook"), nats.Timeout(budget), nats.NoReconnect()}
	opts = append(opts, o.auth()...)
	nc, err := nats.Connect(o.URLs, opts...)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	c := &Cluster{o: o, nc: nc, js: js}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for _, e := range evs {
		if err := c.publish(ctx, repo, e); err != nil {
			return err
		}
	}
	return nil
}

// auth is the options that present the credentials.
func (o Options) auth() []nats.Option {
	switch {
	case o.Creds != "":
		return []nats.Option{nats.UserCredentials(o.Creds)}
	case o.User != "" && o.Password != "":
		return []nats.Option{nats.UserInfo(o.User, o.Password)}
	case o.User != "":
		return []nats.Option{nats.Token(o.User)}
	}
	return nil
}

func (c *Cluster) publish(ctx context.Context, repo string, e store.Event) error {
	m := eventMsg{Repo: repo, Seq: e.Seq, TimeMilli: e.TimeMilli, Old: e.Old, New: e.New, Ref: e.Ref}
	if e.Chat != nil {
		m.Author, m.Subject, m.Count = e.Chat.Author, e.Chat.Subject, e.Chat.Count
	}
	b, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := c.js.Publish(ctx, subjectOf(repo), b, jetstream.WithMsgID(repo+":"+strconv.FormatUint(e.Seq, 10)))
	return err
}

// LastPublished is the highest sequence number of a repository in the
// stream (0: none).
func (c *Cluster) LastPublished(ctx context.Context, repo string) (uint64, error) {
	events, _, _, err := c.ready()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	raw, err := events.GetLastMsgForSubject(ctx, subjectOf(repo))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	_, e, err := decodeEvent(raw.Data)
	return e.Seq, err
}

// decodeEvent checks an event from the stream as strictly as a log line.
func decodeEvent(b []byte) (string, store.Event, error) {
	var m eventMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return "", store.Event{}, fmt.Errorf("cluster: event: %w", err)
	}
	n := wire.Notify{Seq: m.Seq, RepoID: m.Repo, Ref: m.Ref, Old: m.Old, New: m.New}
	if err := n.Validate(); err != nil || m.Seq == 0 {
		return "", store.Event{}, fmt.Errorf("cluster: event %s %d: %v", m.Repo, m.Seq, err)
	}
	e := store.Event{Seq: m.Seq, TimeMilli: m.TimeMilli, Old: m.Old, New: m.New, Ref: m.Ref}
	if m.Author != "" || m.Subject != "" || m.Count != 0 {
		e.Chat = &wire.Chat{Count: m.Count, Author: wire.TrimText(m.Author, wire.MaxAuthor), Subject: wire.TrimText(m.Subject, wire.MaxSubject)}
	}
	return m.Repo, e, nil
}

func authKey(repo string, key wire.Key) string {
	return hex.EncodeToString([]byte(repo)) + "." + key.String()
}

// PutAuth shares an authorisation with every node.
func (c *Cluster) PutAuth(ctx context.Context, repo string, key wire.Key, expiry time.Time) error {
	_, auth, _, err := c.ready()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err = auth.PutString(ctx, authKey(repo, key), strconv.FormatInt(expiry.Unix(), 10))
	return err
}

// DeleteAuth ends a client's authorisations on every node.
func (c *Cluster) DeleteAuth(ctx context.Context, repos []string, key wire.Key) error {
	_, auth, _, err := c.ready()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	for _, r := range repos {
		if err := auth.Delete(ctx, authKey(r, key)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
	}
	return nil
}

// AuthChange is one authorisation as it changed: an expiry, or its end.
type AuthChange struct {
	Repo    string
	Key     wire.Key
	Expiry  time.Time
	Deleted bool
}

// NodeInfo is what a node says of itself in the nodes bucket.
type NodeInfo struct {
	Name    string    `json:"name"`
	UDP     []string  `json:"udp"`     // its UDP addresses, as clients reach them
	Clients int       `json:"clients"` // clients in its memory
	Updated time.Time `json:"updated"`
}

// PutNode renews this node's entry.
func (c *Cluster) PutNode(ctx context.Context, n NodeInfo) error {
	_, _, nodes, err := c.ready()
	if err != nil {
		return err
	}
	b, _ := json.Marshal(n)
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err = nodes.Put(ctx, n.Name, b)
	return err
}

// Nodes lists the live nodes.
func (c *Cluster) Nodes(ctx context.Context) ([]NodeInfo, error) {
	_, _, nodes, err := c.ready()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	keys, err := nodes.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []NodeInfo
	for k := range keys.Keys() {
		e, err := nodes.Get(ctx, k)
		if err != nil {
			continue
		}
		var n NodeInfo
		if json.Unmarshal(e.Value(), &n) == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// Status is the cluster as `gcn-punch status --cluster` shows it.
type Status struct {
	Node      string     `json:"node"`
	Connected string     `json:"connected"` // the NATS server this node talks to; "" when disconnected
	Ready     bool       `json:"ready"`
	Stream    StreamInfo `json:"stream"`
	Nodes     []NodeInfo `json:"nodes"`
}

// StreamInfo is the events stream's state.
type StreamInfo struct {
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Subjects  uint64 `json:"repositories"`
	Replicas  int    `json:"replicas"`
	Leader    string `json:"leader"`
	InCluster int    `json:"replicas_current"`
}

// Status reports the connection, the stream and the nodes.
func (c *Cluster) Status(ctx context.Context) Status {
	st := Status{Node: c.o.Name}
	if c.nc.IsConnected() {
		st.Connected = c.nc.ConnectedUrlRedacted()
	}
	events, _, _, err := c.ready()
	if err != nil {
		return st
	}
	st.Ready = true
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if info, err := events.Info(ctx); err == nil {
		st.Stream = StreamInfo{Messages: info.State.Msgs, Bytes: info.State.Bytes, FirstSeq: info.State.FirstSeq, LastSeq: info.State.LastSeq,
			Subjects: info.State.NumSubjects, Replicas: info.Config.Replicas}
		if info.Cluster != nil {
			st.Stream.Leader = info.Cluster.Leader
			st.Stream.InCluster = 1
			for _, p := range info.Cluster.Replicas {
				if p.Current {
					st.Stream.InCluster++
				}
			}
		}
	}
	st.Nodes, _ = c.Nodes(ctx)
	return st
}
