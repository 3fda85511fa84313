package punch

import "github.com/gitchat/gcn-punch/wire"

// subscribeTries bounds the Subscribes sent for one set of preferences
// without a confirmation: an older rendezvous drops the type and never
// confirms, and each try costs a datagram. One goes after each validation
// and one with each pong until confirmed, so a lost one costs at most a
// pong interval of unfiltered, message-less delivery (the daemon filters
// by itself meanwhile).
const subscribeTries = 4

// subscription is the Subscribe this daemon sends a rendezvous: it reads
// chat messages, and wants the refs of Config.Refs in each repository.
func (d *Daemon) subscription(p *serverLink) *wire.Subscribe {
	m := &wire.Subscribe{Flags: wire.SubscribeMessages | wire.SubscribeNodes}
	if len(d.cfg.Refs) > 0 {
		for _, repo := range p.server().Repos {
			m.Repos = append(m.Repos, wire.RepoPrefs{RepoID: repo, Refs: d.cfg.Refs})
		}
	}
	return m
}

// subscribe sends the link's Subscribe unless the rendezvous confirmed it
// or it was tried subscribeTries times; fresh starts the count again (a
// validation: the rendezvous may have restarted and forgotten it). It goes
// on the primary path, once validated: the rendezvous takes it only from
// an address shown to receive.
func (d *Daemon) subscribe(p *serverLink, fresh bool) {
	m := d.subscription(p)
	dg := m.Digest()
	p.mu.Lock()
	if fresh || p.subscribeFor != dg {
		p.subscribeFor, p.subscribeTries, p.subscribed = dg, 0, false
	}
	if p.subscribed || p.subscribeTries >= subscribeTries || p.primary == nil || !p.primary.validated {
		p.mu.Unlock()
		return
	}
	p.subscribeTries++
	u := p.primary
	p.mu.Unlock()
	d.sendOn(p, u, m, false)
}

// onSubscribed notes the rendezvous's confirmation of the current Subscribe.
func (d *Daemon) onSubscribed(p *serverLink, m *wire.Subscribed) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.Digest == p.subscribeFor {
		p.subscribed = true
	}
}
