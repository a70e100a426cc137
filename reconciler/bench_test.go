package reconciler

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkPushToEnforced measures from `git push` to the local node's datapath holding the
// revision: with the webhook (a GitHub-style signed POST right after the push) and with polling
// every second. Run with -benchtime 20x; p50 and p99 are reported.
func BenchmarkPushToEnforced(b *testing.B) {
	for _, mode := range []string{"webhook", "polling-1s"} {
		b.Run(mode, func(b *testing.B) {
			srv := newGitServer(b)
			w := srv.clone(b)
			w.commit("start", map[string]string{"policies/a.yaml": allowB})
			w.push("main")
			target, _ := localNode(b)
			obj := newObj(srv.httpURL())
			interval := time.Hour
			if mode == "polling-1s" {
				interval = time.Second
			}
			obj.Spec.Interval.Duration = interval
			r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 10 * time.Second}, target)
			r.WorkDir = b.TempDir()
			secret := []byte("bench")
			hook := httptest.NewServer(&Receiver{Secret: secret, Trigger: r.Trigger})
			defer hook.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Run(ctx, nil)
			var samples []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				body := allowC
				if i%2 == 1 {
					body = allowB
				}
				head := w.commit("change", map[string]string{"policies/a.yaml": body})
				start := time.Now()
				w.push("main")
				if mode == "webhook" {
					payload := githubPush(time.Now())
					req, _ := http.NewRequest(http.MethodPost, hook.URL+"/hook/github", strings.NewReader(payload))
					req.Header.Set("X-Hub-Signature-256", "sha256="+hmacSHA256(secret, []byte(payload)))
					req.Header.Set("X-GitHub-Event", "push")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						b.Fatalf("webhook receiver: %s", resp.Status)
					}
				}
				want := "main@sha1:" + head
				for r.Status().Status.LastEnforcedRevision != want {
					if time.Since(start) > 30*time.Second {
						b.Fatalf("revision %s not enforced after 30 s", want)
					}
					time.Sleep(5 * time.Millisecond)
				}
				samples = append(samples, time.Since(start))
			}
			b.StopTimer()
			sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
			b.ReportMetric(float64(samples[len(samples)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(samples[(len(samples)*99)/100].Milliseconds()), "p99-ms")
		})
	}
}
