package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/netpact/netpact/internal/fileutil"
	"github.com/netpact/netpact/policy"
)

// FQDNOptions configure what a node learns from DNS answers for toFQDNs rules.
type FQDNOptions struct {
	// MinTTL is the least time a learned address is kept (Cilium's tofqdns-min-ttl; 0, its
	// default since 1.13, keeps each answer's own TTL).
	MinTTL time.Duration
	// MaxAddrsPerName bounds the addresses kept for one name (Cilium's
	// tofqdns-endpoint-max-ip-per-hostname, 1000; here node-wide). Over it the addresses that
	// expire first are forgotten, except those an open connection still uses (Cilium #20650).
	MaxAddrsPerName int
	// MaxNamesPerAddr bounds the names kept for one address (Cilium #48359: one address of a CDN
	// answering for unbounded names grew its cache without end); over it the name that expires
	// first is forgotten for that address.
	MaxNamesPerAddr int
	// MaxAddrs bounds the addresses of every name together: they take ipcache entries (65,536,
	// shared with pods, nodes and policy CIDRs). An answer that would go over it is refused
	// (the DNS proxy answers SERVFAIL) rather than evicting what others use.
	MaxAddrs int
	// StatePath is where what was learned is kept across an enforcer's restart ("" nowhere).
	StatePath string
}

// Defaults of FQDNOptions.
const (
	DefaultMaxAddrsPerName = 1000
	DefaultMaxNamesPerAddr = 32
	DefaultMaxAddrs        = 16384
	// zombieRecheck is how long an expired address an open connection still used is kept before
	// it is checked again.
	zombieRecheck = 5 * time.Second
	// maxStateBytes bounds the state file read back at start.
	maxStateBytes = 64 << 20
)

// fqdnCache is what DNS answers taught the node: for each name (FQDN form), its addresses and
// when each expires. Guarded by the enforcer's mutex.
type fqdnCache struct {
	opts  FQDNOptions
	names map[string]map[netip.Addr]time.Time
	dirty bool
}

func newFQDNCache(o FQDNOptions) *fqdnCache {
	if o.MaxAddrsPerName <= 0 {
		o.MaxAddrsPerName = DefaultMaxAddrsPerName
	}
	if o.MaxAddrs <= 0 {
		o.MaxAddrs = DefaultMaxAddrs
	}
	if o.MaxNamesPerAddr <= 0 {
		o.MaxNamesPerAddr = DefaultMaxNamesPerAddr
	}
	return &fqdnCache{opts: o, names: map[string]map[netip.Addr]time.Time{}}
}

// learned is the cache as the engine takes it: each address with its names.
func (c *fqdnCache) learned() policy.Learned {
	out := policy.Learned{}
	for name, addrs := range c.names {
		for a := range addrs {
			out[a] = append(out[a], name)
		}
	}
	return out
}

// heldAddrs are the addresses learned under any name.
func (c *fqdnCache) heldAddrs() map[netip.Addr]bool {
	seen := map[netip.Addr]bool{}
	for _, addrs := range c.names {
		for a := range addrs {
			seen[a] = true
		}
	}
	return seen
}

// SetFQDNOptions configures the node's learned names; call it before the first Sync.
func (e *Enforcer) SetFQDNOptions(o FQDNOptions) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fqdn = newFQDNCache(o)
}

// Learn records a DNS answer the DNS proxy let through: the name's addresses, kept for the TTL
// (at least MinTTL). It returns once the datapath enforces them, so that the pod's first packet
// to an address its answer gave is judged with it (Cilium's proxy holds the answer the same way);
// an error means it could not, and the answer must not be released.
func (e *Enforcer) Learn(qname string, addrs []netip.Addr, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.fqdn
	name := policy.FQDN(qname)
	expires := time.Now().Add(max(ttl, c.opts.MinTTL))
	have := c.names[name]
	held := c.heldAddrs()
	fresh, newToNode := 0, map[netip.Addr]bool{}
	for _, a := range addrs {
		if _, ok := have[a.Unmap()]; !ok {
			fresh++
		}
		if !held[a.Unmap()] {
			newToNode[a.Unmap()] = true
		}
	}
	// Only an address the node holds under no name takes another ipcache entry.
	if len(held)+len(newToNode) > c.opts.MaxAddrs && len(newToNode) > 0 {
		return fmt.Errorf("learn %s: the node holds %d learned addresses, the most it may (--tofqdns-max-addrs)", name, len(held))
	}
	if have == nil {
		have = map[netip.Addr]time.Time{}
		c.names[name] = have
	}
	for _, a := range addrs {
		if old, ok := have[a.Unmap()]; !ok || old.Before(expires) {
			have[a.Unmap()] = expires
		}
	}
	if fresh > 0 {
		c.capAddrNames(name, addrs)
	}
	c.dirty = true
	capped, err := e.capNameLocked(name)
	if err != nil {
		return err
	}
	if fresh == 0 && !capped {
		return nil // only expiries moved: the datapath already enforces these addresses
	}
	return e.applyLearnedLocked()
}

// capAddrNames forgets, for each of addrs holding more than MaxNamesPerAddr names, the names
// (other than name) that expire first.
func (c *fqdnCache) capAddrNames(name string, addrs []netip.Addr) {
	for _, a := range addrs {
		a = a.Unmap()
		var others []string
		for n, held := range c.names {
			if _, ok := held[a]; ok && n != name {
				others = append(others, n)
			}
		}
		over := len(others) + 1 - c.opts.MaxNamesPerAddr
		if over <= 0 {
			continue
		}
		sort.Slice(others, func(i, j int) bool { return c.names[others[i]][a].Before(c.names[others[j]][a]) })
		for _, n := range others[:over] {
			delete(c.names[n], a)
			if len(c.names[n]) == 0 {
				delete(c.names, n)
			}
		}
	}
}

// capNameLocked forgets a name's addresses over MaxAddrsPerName, those expiring first, but none
// an open connection uses. It reports whether it forgot any.
func (e *Enforcer) capNameLocked(name string) (bool, error) {
	addrs := e.fqdn.names[name]
	over := len(addrs) - e.fqdn.opts.MaxAddrsPerName
	if over <= 0 {
		return false, nil
	}
	check := make(map[netip.Addr]bool, len(addrs))
	for a := range addrs {
		check[a] = true
	}
	live, err := e.dp.LiveAddrs(check)
	if err != nil {
		return false, fmt.Errorf("cap %s's addresses: %w", name, err)
	}
	order := make([]netip.Addr, 0, len(addrs))
	for a := range addrs {
		if !live[a] {
			order = append(order, a)
		}
	}
	sort.Slice(order, func(i, j int) bool { return addrs[order[i]].Before(addrs[order[j]]) })
	for _, a := range order[:min(over, len(order))] {
		delete(addrs, a)
	}
	return min(over, len(order)) > 0, nil
}

// applyLearnedLocked gives the engine the cache and the datapath what changed: an ipcache write
// when every address's identity exists, else every local pod reprogrammed.
func (e *Enforcer) applyLearnedLocked() error {
	rebuilt := e.engine.SetLearned(e.fqdn.learned())
	if !e.synced {
		return nil // the first Sync programs it
	}
	if rebuilt {
		return e.programLocked(e.lastLocal)
	}
	ipc, _ := e.state.IPCacheWithin(e.node, e.dp.IPCacheCapacity())
	if err := e.dp.SetIPCache(ipc); err != nil {
		return fmt.Errorf("write learned addresses to the ipcache: %w", err)
	}
	return nil
}

// ExpireLearned forgets what expired by now, except addresses an open connection still uses:
// those are checked again a little later.
func (e *Enforcer) ExpireLearned(now time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.fqdn
	expired := map[netip.Addr]bool{}
	for _, addrs := range c.names {
		for a, t := range addrs {
			if !t.After(now) {
				expired[a] = true
			}
		}
	}
	if len(expired) == 0 {
		return nil
	}
	live, err := e.dp.LiveAddrs(expired)
	if err != nil {
		return fmt.Errorf("expire learned addresses: %w", err)
	}
	for name, addrs := range c.names {
		for a, t := range addrs {
			switch {
			case t.After(now):
			case live[a]:
				addrs[a] = now.Add(zombieRecheck)
			default:
				delete(addrs, a)
			}
		}
		if len(addrs) == 0 {
			delete(c.names, name)
		}
	}
	c.dirty = true
	return e.applyLearnedLocked()
}

// LearnedNames are the names the node holds addresses for, each with its addresses.
func (e *Enforcer) LearnedNames() map[string][]netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][]netip.Addr{}
	for name, addrs := range e.fqdn.names {
		for a := range addrs {
			out[name] = append(out[name], a)
		}
		sort.Slice(out[name], func(i, j int) bool { return out[name][i].Less(out[name][j]) })
	}
	return out
}

// fqdnState is the state file: each name's addresses with when they expire.
type fqdnState struct {
	Names map[string]map[netip.Addr]time.Time `json:"names"`
}

// SaveLearned writes the cache to StatePath when it changed since the last save.
func (e *Enforcer) SaveLearned() error {
	e.mu.Lock()
	c := e.fqdn
	if c.opts.StatePath == "" || !c.dirty {
		e.mu.Unlock()
		return nil
	}
	data, err := json.Marshal(fqdnState{Names: c.names})
	c.dirty = false
	e.mu.Unlock()
	if err != nil {
		return fmt.Errorf("save learned names: %w", err)
	}
	if err := fileutil.WriteAtomic(c.opts.StatePath, data, 0o600); err != nil {
		return fmt.Errorf("save learned names: %w", err)
	}
	return nil
}

// RestoreLearned reads back what an earlier enforcer of the node learned (StatePath), so that
// the first Sync enforces it: open connections to learned addresses survive the restart. Expired
// entries come back only for addresses an open connection uses. A missing file is no error.
func (e *Enforcer) RestoreLearned() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.fqdn
	if c.opts.StatePath == "" {
		return 0, nil
	}
	f, err := os.Open(c.opts.StatePath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("restore learned names: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStateBytes+1))
	if err != nil {
		return 0, fmt.Errorf("restore learned names: %w", err)
	}
	if len(data) > maxStateBytes {
		return 0, fmt.Errorf("restore learned names: %s is over %d bytes", c.opts.StatePath, maxStateBytes)
	}
	var st fqdnState
	if err := json.Unmarshal(data, &st); err != nil {
		return 0, fmt.Errorf("restore learned names from %s: %w", c.opts.StatePath, err)
	}
	now := time.Now()
	expired := map[netip.Addr]bool{}
	for _, addrs := range st.Names {
		for a, t := range addrs {
			if !t.After(now) {
				expired[a] = true
			}
		}
	}
	live, err := e.dp.LiveAddrs(expired)
	if err != nil {
		return 0, fmt.Errorf("restore learned names: %w", err)
	}
	n := 0
	for name, addrs := range st.Names {
		keep := map[netip.Addr]time.Time{}
		for a, t := range addrs {
			switch {
			case t.After(now):
				keep[a.Unmap()] = t
			case live[a]:
				keep[a.Unmap()] = now.Add(zombieRecheck)
			}
		}
		if len(keep) > 0 && n+len(keep) <= c.opts.MaxAddrs {
			c.names[policy.FQDN(name)] = keep
			n += len(keep)
		}
	}
	return n, e.applyLearnedLocked()
}

// RunLearnedGC expires learned addresses and saves the cache every interval until ctx ends.
func (e *Enforcer) RunLearnedGC(ctx context.Context, interval time.Duration, fail func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := e.ExpireLearned(now); err != nil {
				fail(err)
			}
			if err := e.SaveLearned(); err != nil {
				fail(err)
			}
		}
	}
}

// namesOf are the names the node learned an address under, sorted (Hubble's destination_names).
func (e *Enforcer) namesOf(a netip.Addr) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for name, addrs := range e.fqdn.names {
		if _, ok := addrs[a]; ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
