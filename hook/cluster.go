package hook

import (
	"encoding/json"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// ClusterBudget bounds publishing a push to a cluster's stream: a
// reachable NATS server on the network takes a few milliseconds to connect
// and acknowledge; an unreachable one costs the push this, and the
// rendezvous beside the store publishes the events from the log later.
const ClusterBudget = 25 * time.Millisecond

// publishToCluster publishes the push's events to the cluster's stream
// when the rendezvous runs with --cluster (the store's cluster.json), so
// that they reach every node even if that rendezvous is down. It reports
// whether they were published.
func publishToCluster(st *store.Store, repo string, evs []store.Event) bool {
	b, err := st.Cluster()
	if b == nil || len(evs) == 0 {
		return false
	}
	var o cluster.Options
	if err == nil {
		err = json.Unmarshal(b, &o)
	}
	if err == nil {
		err = cluster.PublishNow(o, repo, evs, ClusterBudget)
	}
	// Silent on failure: the pusher can do nothing about it, and the
	// rendezvous, which logs the cluster's troubles, publishes from the log.
	return err == nil
}
