//go:build linux

package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// process is a workload running as a program inside a pod's namespace.
type process struct {
	cmd *exec.Cmd
	dir string
}

// Close kills the workload's whole process group (nginx workers, PostgreSQL's helpers).
func (p *process) Close() error {
	if p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		p.cmd.Wait()
	}
	return os.RemoveAll(p.dir)
}

// launcher starts workloads from one OS thread that lives as long as the process: the kernel
// sends a parent-death signal when the thread that forked a child exits, not the process, and a
// Go program's other threads may come and go.
var launcher struct {
	once sync.Once
	reqs chan launch
}

type launch struct {
	cmd  *exec.Cmd
	done chan error
}

// startDying starts cmd so that it is killed when this process dies, even by SIGKILL: a
// workload never outlives a killed test or netpact test run.
func startDying(cmd *exec.Cmd) error {
	launcher.once.Do(func() {
		launcher.reqs = make(chan launch)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread is the workloads' parent
			for l := range launcher.reqs {
				l.done <- l.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	done := make(chan error, 1)
	launcher.reqs <- launch{cmd: cmd, done: done}
	return <-done
}

// startWorkload starts a Debian program in the pod: nginx serving every TCP port of the pod, or
// PostgreSQL on its TCP port. It returns once the first port accepts connections.
func startWorkload(p *podnet.Pod, workload string, ports []Port) (*process, error) {
	var tcp []uint16
	for _, port := range ports {
		if port.Protocol == policy.ProtoTCP {
			tcp = append(tcp, port.Port)
		}
	}
	if len(tcp) == 0 {
		return nil, fmt.Errorf("pod %s: workload %s needs a TCP port", p.Name, workload)
	}
	dir, err := os.MkdirTemp("", "netpact-"+workload+"-")
	if err != nil {
		return nil, err
	}
	var args []string
	switch workload {
	case "nginx":
		args, err = nginxArgs(dir, p.Name, tcp)
	case "postgres":
		args, err = postgresArgs(dir, tcp[0])
	default:
		err = fmt.Errorf("unknown workload %q", workload)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.Netns}, args...)...)
	logf, _ := os.Create(filepath.Join(dir, "output.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := startDying(cmd); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pod %s: start %s: %w", p.Name, workload, err)
	}
	proc := &process{cmd: cmd, dir: dir}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var c net.Conn
		err := p.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", tcp[0]), 200*time.Millisecond)
			return err
		})
		if err == nil {
			c.Close()
			return proc, nil
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "output.log"))
			proc.Close()
			return nil, fmt.Errorf("pod %s: %s did not start listening on %d: %s", p.Name, workload, tcp[0], strings.TrimSpace(string(out)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func nginxArgs(dir, pod string, ports []uint16) ([]string, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		return nil, errors.New("nginx is missing: apt-get install nginx-light")
	}
	var listen strings.Builder
	for _, port := range ports {
		fmt.Fprintf(&listen, "    listen %d;\n    listen [::]:%d;\n", port, port)
	}
	// One process (no master and workers): the parent-death signal reaches all of nginx.
	conf := fmt.Sprintf(`master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
%[2]s    location / { return 200 "nginx in %[3]s\n"; }
  }
}
`, dir, listen.String(), pod)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return []string{nginx, "-c", path, "-p", dir, "-g", "daemon off;"}, nil
}

// postgresTemplate is a database cluster made once per process with initdb, copied for each pod.
var postgresTemplate struct {
	once sync.Once
	dir  string
	err  error
}

func postgresBin() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		return "", errors.New("PostgreSQL is missing: apt-get install postgresql")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

func postgresArgs(dir string, port uint16) ([]string, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	postgresTemplate.once.Do(func() {
		tdir, err := os.MkdirTemp("", "netpact-pgtemplate-")
		if err != nil {
			postgresTemplate.err = err
			return
		}
		data := filepath.Join(tdir, "data")
		if out, err := exec.Command("chown", "postgres", tdir).CombinedOutput(); err != nil {
			postgresTemplate.err = fmt.Errorf("chown: %v: %s", err, out)
			return
		}
		out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres").CombinedOutput()
		if err != nil {
			postgresTemplate.err = fmt.Errorf("initdb: %v: %s", err, out)
			return
		}
		postgresTemplate.dir = data
	})
	if postgresTemplate.err != nil {
		return nil, postgresTemplate.err
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command("cp", "-a", postgresTemplate.dir, data).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy database: %v: %s", err, out)
	}
	if out, err := exec.Command("chown", "-R", "postgres", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("chown: %v: %s", err, out)
	}
	// setpriv execs (runuser would fork and wait): one process from ip netns exec to the
	// postmaster, which gets the parent-death signal again after its change of user; its own
	// children exit when it dies.
	return []string{"setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig", "KILL", "--",
		filepath.Join(bin, "postgres"), "-D", data, "-k", dir,
		"-p", fmt.Sprint(port), "-c", "listen_addresses=*", "-c", "fsync=off", "-c", "shared_buffers=16MB"}, nil
}

// startKafka starts the kafka workload in a local node's pod: a broker on port of every address
// of the pod, advertising the pod's IPv4 address, with topics (and the seed topics) holding a
// record each, within the time startWorkload gives a program.
func startKafka(p *podnet.Pod, port uint16, topics []string) (*probeagent.KafkaBroker, error) {
	listen := func(network, addr string) (net.Listener, error) {
		var l net.Listener
		err := p.Do(func() error {
			var err error
			l, err = net.Listen(network, addr)
			return err
		})
		return l, err
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := p.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := probeagent.StartKafkaBroker(ctx, listen, netip.AddrPortFrom(p.IPv4, port), topics, dial)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return b, nil
}

// startTLS starts the tls workload of an external host in its namespace: HTTPS on each of its
// ports with a certificate for its names and addresses (probeagent.NewTLSServer).
func startTLS(p *podnet.Pod, e *External) (*servers, error) {
	cert, err := serverCertificate(e.Names, []netip.Addr{p.IPv4, p.IPv6})
	if err != nil {
		return nil, fmt.Errorf("external %s: %w", e.Name, err)
	}
	s := &servers{}
	for _, port := range e.Ports {
		if port.Protocol != policy.ProtoTCP {
			continue
		}
		var l net.Listener
		if err := p.Do(func() error {
			var err error
			l, err = net.Listen("tcp", fmt.Sprintf(":%d", port.Port))
			return err
		}); err != nil {
			s.Close()
			return nil, fmt.Errorf("external %s: listen %s: %w", e.Name, port, err)
		}
		srv := probeagent.NewTLSServer(e.Name, cert)
		s.closers = append(s.closers, srv)
		go srv.ServeTLS(l, "", "")
	}
	return s, nil
}
