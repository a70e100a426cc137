package matrix

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// Every mark has a colour of its own, and none is the highlight's.
func TestPaletteHasAColourPerMark(t *testing.T) {
	entries, err := legend()
	if err != nil {
		t.Fatal(err)
	}
	used := map[color.RGBA]string{highlight: "the highlight", unknownColour: "an unknown mark", paper: "the paper", ink: "the ink"}
	for _, e := range entries {
		colour, class := swatch(e.Mark)
		if class == "unknown" {
			t.Errorf("mark %q (%s) has no colour", e.Mark, e.Meaning)
		} else if other, ok := used[colour]; ok {
			t.Errorf("mark %q has the colour of %s", e.Mark, other)
		}
		used[colour] = "mark " + e.Mark
	}
}

func TestPNG(t *testing.T) {
	p := samplePlan()
	var b bytes.Buffer
	if err := p.PNG(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "plan.png"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}

	// The size from the documented geometry: names are "a/client" (8 characters) down, "a/web"
	// and "b/db" (5) across on 80/TCP, "kube-system/coredns" (19) on 53/UDP, three sources each;
	// the legend shows ".", "X", "L", "D", "A", "-" and the outline.
	const c, char, line, margin, spacing = PictureCell, PictureChar, PictureLine, PictureMargin, PictureSpacing
	const labels = char * 8
	panel := func(longestTo int) int { return spacing + line + margin + char*longestTo + margin + 3*c }
	wantHeight := margin + line + panel(5) + panel(19) + spacing + 7*c + margin
	header := "after feature (base main): 4 cells change: 2 newly allowed, 2 newly denied"
	widest := max(char*len(header), labels+margin+2*c, c+margin+char*len("changed since main"))
	for _, l := range policy.Legend() {
		if strings.ContainsAny(l[1:2], ".XLDA") {
			widest = max(widest, c+margin+char*len(l[4:]))
		}
	}
	if got, want := img.Bounds().Size(), image.Pt(margin+widest+margin, wantHeight); got != want {
		t.Errorf("picture is %v, want %v", got, want)
	}

	layout, err := p.PictureLayout()
	if err != nil {
		t.Fatal(err)
	}
	// 53/UDP is the first panel: its first cell is below the header, the port and the labels.
	first := image.Pt(margin+labels+margin, margin+line+spacing+line+margin+char*19+margin)
	want := image.Rectangle{Min: first, Max: first.Add(image.Pt(c-PictureGap, c-PictureGap))}
	if r, ok := layout.Cell(key(client, coredns, 53, policy.ProtoUDP)); !ok || r != want {
		t.Errorf("first cell at %v, want a square of %d at %v", r, c-PictureGap, first)
	}

	for _, ch := range p.Changes {
		checkCell(t, img, layout, ch.Key, ch.After.Predicted, true)
	}
	checkCell(t, img, layout, key(web, db, 80, policy.ProtoTCP), policy.OutcomeAllowed, false)
	checkCell(t, img, layout, key(db, web, 80, policy.ProtoTCP), policy.OutcomeDenied, false)
	checkCell(t, img, layout, key(client, coredns, 53, policy.ProtoUDP), policy.OutcomeDNS, false)
	// The outline is on the changed cells and the legend's swatch, nowhere else.
	if n := testenv.Regions(img, highlight); n != len(p.Changes)+1 {
		t.Errorf("%d outlines, want %d changed cells and the legend's", n, len(p.Changes)+1)
	}
	ring := (c-PictureGap)*(c-PictureGap) - (c-PictureGap-2*PictureOutline)*(c-PictureGap-2*PictureOutline)
	if n := testenv.Colours(img)[highlight]; n != (len(p.Changes)+1)*ring {
		t.Errorf("%d pixels of the outline colour, want %d outlines of %d", n, len(p.Changes)+1, ring)
	}
	if err := (&Plan{}).PNG(&bytes.Buffer{}); err == nil {
		t.Error("a plan without matrices was drawn")
	}
}

// checkCell checks a cell's square: the verdict's colour inside (around its mark), and a ring of
// the outline colour when the cell changed, else of the verdict's colour too.
func checkCell(t *testing.T, img image.Image, layout *PictureLayout, k Key, o policy.Outcome, changed bool) {
	t.Helper()
	r, ok := layout.Cell(k)
	if !ok {
		t.Fatalf("%s -> %s %s is not in the picture", k.From, k.To, k.Port)
	}
	if r.Dx() != PictureCell-PictureGap || r.Dy() != PictureCell-PictureGap {
		t.Errorf("%s -> %s %s: cell is %v", k.From, k.To, k.Port, r.Size())
	}
	fill, _ := swatch(o.Mark())
	ringColour := fill
	if changed {
		ringColour = highlight
	}
	inner := r.Inset(PictureOutline)
	filled := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			got := testenv.RGBA(img, x, y)
			switch {
			case !image.Pt(x, y).In(inner):
				if got != ringColour {
					t.Fatalf("%s -> %s %s (changed %v): border pixel (%d,%d) is %s, want %s", k.From, k.To, k.Port, changed, x, y, hex(got), hex(ringColour))
				}
			case got == fill:
				filled++
			case got != ink:
				t.Fatalf("%s -> %s %s: inside pixel (%d,%d) is %s, want %s or the mark's ink", k.From, k.To, k.Port, x, y, hex(got), hex(fill))
			}
		}
	}
	if filled < inner.Dx()*inner.Dy()*3/4 {
		t.Errorf("%s -> %s %s: %d of %d pixels inside have the colour of %q", k.From, k.To, k.Port, filled, inner.Dx()*inner.Dy(), o.Mark())
	}
}

// A matrix too large to draw is refused before any memory is taken for it.
func TestPictureBounded(t *testing.T) {
	before, after := New[policy.Outcome](), New[policy.Outcome]()
	for i := range 400 {
		for j := range 400 {
			k := Key{From: fmt.Sprintf("ns/pod-%03d", i), To: fmt.Sprintf("ns/pod-%03d", j), Port: Port{Number: 80, Protocol: policy.ProtoTCP}}
			before.Set(Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeAllowed})
			after.Set(Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeAllowed})
		}
	}
	p := NewPlan("base", "head", nil, before, after)
	var b bytes.Buffer
	if err := p.PNG(&b); err == nil || !strings.Contains(err.Error(), "more than the") {
		t.Fatalf("a 400×400 matrix (about 10,000×10,000 pixels) was drawn: err %v, %d bytes", err, b.Len())
	}
}
