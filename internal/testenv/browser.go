package testenv

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Screenshot has headless Chromium (Debian's) load a page in a window of w×h and returns what it
// shows. The browser's processes share a process group that is killed once it exits or times out.
func Screenshot(t testing.TB, page, shot string, w, h int) image.Image {
	t.Helper()
	chromium := RequireCommand(t, "chromium", "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--force-device-scale-factor=1", "--force-color-profile=srgb",
		fmt.Sprintf("--window-size=%d,%d", w, h), "--screenshot="+shot, "--user-data-dir="+filepath.Join(t.TempDir(), "profile"),
		// The page is a file: no request has anywhere to go.
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
		(&url.URL{Scheme: "file", Path: page}).String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // helpers that outlived the browser; ESRCH when none
		t.Cleanup(func() { NoneLeft(t, pgid, "chromium") })
	}
	t.Logf("chromium took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out.String())
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v\n%s", err, out.String())
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode screenshot: %v", err)
	}
	return img
}

// RGBA is the colour of a pixel.
func RGBA(img image.Image, x, y int) color.RGBA {
	return color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
}

// Colours counts the pixels of each colour.
func Colours(img image.Image) map[color.RGBA]int {
	n := map[color.RGBA]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			n[RGBA(img, x, y)]++
		}
	}
	return n
}

// Regions counts the regions of pixels of exactly colour c, neighbours across and down.
func Regions(img image.Image, c color.RGBA) int {
	b := img.Bounds()
	seen := map[image.Point]bool{}
	n := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			start := image.Pt(x, y)
			if seen[start] || RGBA(img, x, y) != c {
				continue
			}
			n++
			seen[start] = true
			for todo := []image.Point{start}; len(todo) > 0; {
				q := todo[len(todo)-1]
				todo = todo[:len(todo)-1]
				for _, d := range []image.Point{{1, 0}, {-1, 0}, {0, 1}, {0, -1}} {
					r := q.Add(d)
					if r.In(b) && !seen[r] && RGBA(img, r.X, r.Y) == c {
						seen[r] = true
						todo = append(todo, r)
					}
				}
			}
		}
	}
	return n
}

// BlankRowsAtBottom is how many rows at the bottom of img are all paper: a page that fits its
// window leaves some.
func BlankRowsAtBottom(img image.Image, paper color.RGBA) int {
	b := img.Bounds()
	for y := b.Max.Y - 1; y >= b.Min.Y; y-- {
		for x := b.Min.X; x < b.Max.X; x++ {
			if RGBA(img, x, y) != paper {
				return b.Max.Y - 1 - y
			}
		}
	}
	return b.Dy()
}
