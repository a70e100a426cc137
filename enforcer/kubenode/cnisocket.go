package kubenode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/netpact/netpact/enforcer/cniplugin"
)

// ServeCNI answers the CNI plugin on a unix socket only root on the node can reach: an "add"
// returns once the pod's endpoint is programmed (at most wait), a "del" asks for a sync. It
// returns when ctx ends.
func (e *Enforcement) ServeCNI(ctx context.Context, path string, wait time.Duration) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cni socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale cni socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("cni socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("cni socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cni socket: %w", err)
		}
		go e.answer(ctx, conn, wait)
	}
}

func (e *Enforcement) answer(ctx context.Context, conn net.Conn, wait time.Duration) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wait + 5*time.Second))
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadBytes('\n')
	rep := cniplugin.AgentReply{}
	var req cniplugin.AgentRequest
	switch {
	case err != nil:
		rep.Error = fmt.Sprintf("read request: %v", err)
	case json.Unmarshal(line, &req) != nil:
		rep.Error = "request is not JSON"
	case req.Op == "add":
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := e.WaitProgrammed(wctx, req.Namespace, req.Pod, req.PodUID)
		cancel()
		if err != nil {
			rep.Error = err.Error()
			e.cfg.Log.Error("cni add", "pod", req.Namespace+"/"+req.Pod, "err", err)
		}
	case req.Op == "del":
		e.Poke()
	default:
		rep.Error = fmt.Sprintf("unknown op %q", req.Op)
	}
	b, _ := json.Marshal(rep)
	_, _ = conn.Write(append(b, '\n'))
}
