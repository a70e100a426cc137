package localnode

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
)

// An anchor is an established reverse proxy (Debian's nginx or HAProxy) that BenchmarkL7Proxy
// measures netpact's proxy against. It runs in the server's pod, listening on the pod's address
// at port and forwarding to the server at 127.0.0.1:upstream: the client's connection crosses
// the same veths as a direct one, and the anchor adds one TCP connection, as netpact's proxy
// does (which terminates the client's connection on the node and opens its own to the pod).
type anchor struct {
	// bin is the program's name.
	bin string
	// config is the configuration file for a listener at addr and a server at upstream, with
	// dir for the files the proxy writes.
	config func(dir, addr, upstream string) string
	// args run the proxy in the foreground on the configuration file.
	args func(dir, file string) []string
}

var anchors = map[string]anchor{
	"nginx": {
		bin: "nginx",
		// Upstream keep-alive: idle connections to the server are kept (64) and reused for any
		// client's request. No limit on requests per connection, on either side, as netpact's
		// proxy has none.
		config: func(dir, addr, upstream string) string {
			return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
user root;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	upstream server {
		server %[3]s;
		keepalive 64;
		keepalive_requests 1000000000;
	}
	server {
		listen %[2]s;
		keepalive_requests 1000000000;
		location / {
			proxy_pass http://server;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`, dir, addr, upstream)
		},
		args: func(dir, file string) []string { return []string{"-p", dir, "-e", "stderr", "-c", file} },
	},
	"HAProxy": {
		bin: "haproxy",
		// mode http with http-reuse always: an idle connection to the server serves any client's
		// next request, as nginx's keep-alive pool does.
		config: func(dir, addr, upstream string) string {
			return fmt.Sprintf(`global
	nbthread 2
	maxconn 8000
defaults
	mode http
	timeout connect 2s
	timeout client 30s
	timeout server 30s
	timeout http-keep-alive 30s
frontend anchor
	bind %s
	default_backend server
backend server
	http-reuse always
	server s1 %s
`, addr, upstream)
		},
		args: func(dir, file string) []string { return []string{"-db", "-f", file} },
	},
}

// startAnchor starts the anchor name in pod p's namespace, listening on the pod's address at
// port and forwarding to 127.0.0.1:upstream, and returns once it accepts connections. It is
// stopped when the benchmark ends, with every process of its group and its directory.
func startAnchor(b *testing.B, p *podnet.Pod, name, port, upstream string) {
	b.Helper()
	a := anchors[name]
	path, err := exec.LookPath(a.bin)
	if err != nil {
		path, err = exec.LookPath(filepath.Join("/usr/sbin", a.bin))
	}
	if err != nil {
		testenv.Missing(b, name, "make deps-bench installs it")
	}
	dir := b.TempDir()
	addr := net.JoinHostPort(p.IPv4.String(), port)
	file := filepath.Join(dir, a.bin+".conf")
	if err := os.WriteFile(file, []byte(a.config(dir, addr, net.JoinHostPort("127.0.0.1", upstream))), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.Netns, path}, a.args(dir, file)...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	pgid := cmd.Process.Pid
	b.Cleanup(func() {
		// SIGTERM: both stop at once, nginx's master after its workers.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			b.Errorf("%s did not stop on SIGTERM within 5s", name)
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // what outlived it; ESRCH when nothing
		testenv.NoneLeft(b, pgid, name)
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			b.Fatalf("%s exited at start: %v", name, waitErr)
		default:
		}
		err := p.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not accept connections on %s: %v", name, addr, err)
		}
	}
}
