package cniplugin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// DefaultAgentSocket is where the enforcer listens for the plugin on a node.
const DefaultAgentSocket = "/var/run/netpact/enforcer.sock"

// AgentRequest is what the plugin tells the enforcer: "add" waits until the pod's endpoint is
// programmed (the pod is closed until then), "del" only says the pod is gone.
type AgentRequest struct {
	Op          string `json:"op"`
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	PodUID      string `json:"podUID,omitempty"`
	ContainerID string `json:"containerID"`
}

// AgentReply is the enforcer's answer; an empty Error means done.
type AgentReply struct {
	Error string `json:"error,omitempty"`
}

// AskAgent sends one request over the enforcer's unix socket and waits at most timeout.
func AskAgent(socket string, req AgentRequest, timeout time.Duration) error {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return fmt.Errorf("reach the enforcer at %s: %w", socket, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("enforcer socket: %w", err)
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("ask the enforcer: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("the enforcer did not answer within %s: %w", timeout, err)
	}
	var rep AgentReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("the enforcer's answer: %w", err)
	}
	if rep.Error != "" {
		return errors.New(rep.Error)
	}
	return nil
}
