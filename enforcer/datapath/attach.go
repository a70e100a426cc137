package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attacher attaches both programs to each endpoint's host veth: tc_from_pod where the veth
// receives (what the pod sends), tc_to_pod where it transmits (what the pod receives).
type attacher struct {
	pinDir          string
	forceLegacy     bool
	fromPod, toPod  *ebpf.Program
	fromUplink      *ebpf.Program
	links           map[string]link.Link // pin name -> tcx link
	legacyIfindexes map[int]bool
	legacy          bool
}

const (
	suffixFromPod = "from_pod"
	suffixToPod   = "to_pod"
	// suffixUplink is the uplink's program (tc_from_uplink): the L7 redirect of flows from other
	// nodes.
	suffixUplink = "uplink"
)

func pinName(ifindex int, suffix string) string { return fmt.Sprintf("%d_%s", ifindex, suffix) }

func (a *attacher) mode() string {
	if a.legacy || a.forceLegacy {
		return "tc"
	}
	return "tcx"
}

// adopt reopens the links a previous process pinned and swaps their programs for the ones this
// process loaded, atomically (link update), so no packet ever sees no program. Pins of veths that
// no longer exist are removed.
func (a *attacher) adopt() error {
	a.links = map[string]link.Link{}
	a.legacyIfindexes = map[int]bool{}
	entries, err := os.ReadDir(a.pinDir)
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(a.pinDir, e.Name())
		idxStr, suffix, ok := strings.Cut(e.Name(), "_")
		ifindex, convErr := strconv.Atoi(idxStr)
		if !ok || convErr != nil || (suffix != suffixFromPod && suffix != suffixToPod && suffix != suffixUplink) {
			continue
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			os.Remove(path)
			continue
		}
		if _, err := net.InterfaceByIndex(ifindex); err != nil {
			l.Unpin()
			l.Close()
			continue
		}
		prog := a.fromPod
		switch suffix {
		case suffixToPod:
			prog = a.toPod
		case suffixUplink:
			prog = a.fromUplink
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return fmt.Errorf("swap program on pinned link %s: %w", e.Name(), err)
		}
		a.links[e.Name()] = l
	}
	return nil
}

// attach attaches both programs to a veth, unless already attached (then the adopted links
// carry the current programs already).
func (a *attacher) attach(ifindex int, ifname string) error {
	if !a.forceLegacy && !a.legacy {
		err := a.attachTCX(ifindex, ifname)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		a.legacy = true
	}
	return a.attachLegacy(ifindex, ifname)
}

func (a *attacher) attachTCX(ifindex int, ifname string) error {
	for _, d := range []struct {
		suffix string
		prog   *ebpf.Program
		at     ebpf.AttachType
	}{{suffixFromPod, a.fromPod, ebpf.AttachTCXIngress}, {suffixToPod, a.toPod, ebpf.AttachTCXEgress}} {
		name := pinName(ifindex, d.suffix)
		if _, ok := a.links[name]; ok {
			continue
		}
		// At the head of the chain: a program that is already there and returns TCX_PASS
		// would otherwise decide before netpact does.
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: d.prog, Attach: d.at, Anchor: link.Head()})
		if err != nil {
			return fmt.Errorf("attach tcx %s to %s: %w", d.suffix, ifname, err)
		}
		if err := l.Pin(filepath.Join(a.pinDir, name)); err != nil {
			l.Close()
			return fmt.Errorf("pin tcx link %s of %s: %w", d.suffix, ifname, err)
		}
		a.links[name] = l
	}
	return nil
}

func (a *attacher) attachLegacy(ifindex int, ifname string) error {
	nl, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("attach tc to %s: find link: %w", ifname, err)
	}
	qdisc := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("attach tc to %s: add clsact qdisc: %w", ifname, err)
	}
	for _, d := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
	}{{a.fromPod, netlink.HANDLE_MIN_INGRESS, "netpact_from_pod"}, {a.toPod, netlink.HANDLE_MIN_EGRESS, "netpact_to_pod"}} {
		f := &netlink.BpfFilter{
			FilterAttrs:  netlink.FilterAttrs{LinkIndex: nl.Attrs().Index, Parent: d.parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
			Fd:           d.prog.FD(),
			Name:         d.name,
			DirectAction: true,
		}
		// Replace swaps the program in place: no moment without a filter.
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("attach tc %s to %s: %w", d.name, ifname, err)
		}
	}
	a.legacyIfindexes[ifindex] = true
	return nil
}

func (a *attacher) detach(ifindex int) error {
	var errs []error
	for _, suffix := range []string{suffixFromPod, suffixToPod, suffixUplink} {
		name := pinName(ifindex, suffix)
		if l, ok := a.links[name]; ok {
			errs = append(errs, l.Unpin(), l.Close())
			delete(a.links, name)
		}
	}
	if a.legacyIfindexes[ifindex] {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1}}
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, err)
			}
		}
		delete(a.legacyIfindexes, ifindex)
	}
	return errors.Join(errs...)
}

func (a *attacher) detachAll() error {
	var errs []error
	seen := map[int]bool{}
	for name := range a.links {
		idx, _, _ := strings.Cut(name, "_")
		n, _ := strconv.Atoi(idx)
		seen[n] = true
	}
	for n := range a.legacyIfindexes {
		seen[n] = true
	}
	for n := range seen {
		errs = append(errs, a.detach(n))
	}
	return errors.Join(errs...)
}

// close releases link handles; pinned links stay attached.
func (a *attacher) close() {
	for _, l := range a.links {
		l.Close()
	}
	a.links = map[string]link.Link{}
}
