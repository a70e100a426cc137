//go:build !linux

package probeagent

import (
	"context"
	"errors"
)

var errSCTPNeedsLinux = errors.New("SCTP probes need Linux: an INIT is sent and received on raw sockets")

func sctpProbe(r Request) Result {
	return Result{ID: r.ID, Outcome: "error", Note: errSCTPNeedsLinux.Error()}
}

func serveSCTP(context.Context, string) error { return errSCTPNeedsLinux }
