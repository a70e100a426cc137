package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// newGitServerCommand is the kind suite's Git server: Debian's git http-backend behind Go's CGI
// handler, serving (and accepting pushes to) bare repositories under --root. It has no
// authentication: it is a test fixture inside a test cluster, hidden from the command list.
func newGitServerCommand() *cobra.Command {
	var root, listen string
	var repos []string
	cmd := &cobra.Command{
		Use:    "git-server",
		Short:  "Serve bare Git repositories over smart HTTP, pushes allowed (the kind suite's Git server)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			backend := "/usr/lib/git-core/git-http-backend"
			if _, err := os.Stat(backend); err != nil {
				return fmt.Errorf("git http-backend: %w (apt-get install git)", err)
			}
			for _, r := range repos {
				dir := filepath.Join(root, r+".git")
				if _, err := os.Stat(dir); err == nil {
					continue
				}
				for _, args := range [][]string{{"init", "-q", "--bare", "-b", "main", dir},
					{"-C", dir, "config", "http.receivepack", "true"}} {
					if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
						return fmt.Errorf("git %v: %w: %s", args, err, out)
					}
				}
			}
			h := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
			mux := http.NewServeMux()
			mux.Handle("/", h)
			mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
			srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10e9}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); srv.Close() }()
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s on %s\n", root, listen)
			if err := srv.ListenAndServe(); err != http.ErrServerClosed {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "/srv/git", "directory of the bare repositories")
	cmd.Flags().StringVar(&listen, "listen", ":8080", "address to serve on")
	cmd.Flags().StringSliceVar(&repos, "repo", []string{"policies"}, "repositories to create (NAME.git) when missing")
	return cmd
}
