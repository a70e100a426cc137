package matrix

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The picture's geometry, in pixels. Text is basicfont.Face7x13: every character PictureChar
// wide and PictureLine high.
const (
	// PictureCell is the pitch of the cells across and down, the gap between them included.
	PictureCell = 24
	// PictureGap is the background left between neighbouring cells.
	PictureGap = 2
	// PictureOutline is the width of a changed cell's outline, inside its square.
	PictureOutline = 3
	PictureChar    = 7
	PictureLine    = 13
	// PictureMargin is around the picture, and between a title, the labels and the cells.
	PictureMargin = 8
	// PictureSpacing is above each panel and above the legend.
	PictureSpacing = 16
)

// PictureLayout is where PNG draws everything. Down the picture:
//
//	PictureMargin
//	the header, one line: "after HEAD (base BASE): SUMMARY"
//	for each port of the after matrix, by number, a panel:
//	  PictureSpacing
//	  the port, one line
//	  PictureMargin
//	  the destinations' names, vertical: PictureChar × the longest name
//	  PictureMargin
//	  a row of PictureCell per source
//	PictureSpacing
//	the legend, a line of PictureCell per mark the panels show, in policy.Legend's order, then
//	one for the outline when any cell changed
//	PictureMargin
//
// Across: PictureMargin, the sources' names right-aligned in a column as wide as the longest of
// any panel (LabelWidth, PictureChar a character), PictureMargin, a column of PictureCell per
// destination. The picture is as wide as its widest line (header, port, a panel's labels and
// cells, or a legend line: PictureCell, PictureMargin, its text) with PictureMargin either side.
// Text is shown as ASCII, other characters as "?".
type PictureLayout struct {
	Width, Height int
	// LabelWidth is the width of the sources' names.
	LabelWidth int
	Panels     []PicturePanel
	header     string
	legend     []pictureLegendLine
}

// PicturePanel is one port's matrix in the picture: Grid's rows and columns.
type PicturePanel struct {
	Port       Port
	Froms, Tos []string
	// Top is the top of the panel's title; Grid is the top left of its first cell.
	Top  int
	Grid image.Point
}

// pictureLegendLine is a swatch and what it means; an empty mark is the outline's line.
type pictureLegendLine struct {
	top        int
	mark, text string
}

// PictureLayout lays out the after matrix as PNG draws it.
func (p *Plan) PictureLayout() (*PictureLayout, error) {
	if p.After == nil {
		return nil, errNoMatrix
	}
	entries, err := legend()
	if err != nil {
		return nil, err
	}
	l := &PictureLayout{header: pictureText(fmt.Sprintf("after %s (base %s): %s", p.Head, p.Base, p.Summary()))}
	for _, port := range p.After.Ports() {
		froms, tos := p.After.Grid(port)
		l.Panels = append(l.Panels, PicturePanel{Port: port, Froms: froms, Tos: tos})
		l.LabelWidth = max(l.LabelWidth, PictureChar*longest(froms))
	}
	width := PictureChar * len(l.header)
	gridX := PictureMargin + l.LabelWidth + PictureMargin
	y := PictureMargin + PictureLine
	shown := map[string]bool{}
	for i := range l.Panels {
		pn := &l.Panels[i]
		y += PictureSpacing
		pn.Top = y
		y += PictureLine + PictureMargin + PictureChar*longest(pn.Tos) + PictureMargin
		pn.Grid = image.Pt(gridX, y)
		y += PictureCell * len(pn.Froms)
		width = max(width, PictureChar*len(pn.Port.String()), l.LabelWidth+PictureMargin+PictureCell*len(pn.Tos))
		for _, from := range pn.Froms {
			for _, to := range pn.Tos {
				shown[p.cellMark(Key{From: from, To: to, Port: pn.Port})] = true
			}
		}
	}
	y += PictureSpacing
	for _, e := range entries {
		if shown[e.Mark] {
			l.legend = append(l.legend, pictureLegendLine{top: y, mark: e.Mark, text: pictureText(e.Meaning)})
			y += PictureCell
		}
	}
	if len(p.Changes) > 0 {
		l.legend = append(l.legend, pictureLegendLine{top: y, text: pictureText("changed since " + p.Base)})
		y += PictureCell
	}
	for _, line := range l.legend {
		width = max(width, PictureCell+PictureMargin+PictureChar*len(line.text))
	}
	l.Width, l.Height = width+2*PictureMargin, y+PictureMargin
	if l.Width*l.Height > MaxPicturePixels {
		return nil, fmt.Errorf("the picture would be %d×%d pixels, more than the %d a picture may have: "+
			"keep fewer pods with --pod, or read the HTML report", l.Width, l.Height, MaxPicturePixels)
	}
	return l, nil
}

// MaxPicturePixels bounds the picture: a cluster of thousands of distinct pods would otherwise
// ask for gigabytes of memory (four bytes a pixel) before a byte is written.
const MaxPicturePixels = 64 << 20

// Cell is the square a cell is drawn in, its gap left out, and false when the picture has no
// such row or column.
func (l *PictureLayout) Cell(k Key) (image.Rectangle, bool) {
	for _, pn := range l.Panels {
		if pn.Port != k.Port {
			continue
		}
		i, j := slices.Index(pn.Froms, k.From), slices.Index(pn.Tos, k.To)
		if i < 0 || j < 0 {
			return image.Rectangle{}, false
		}
		return pn.cell(i, j), true
	}
	return image.Rectangle{}, false
}

func (pn PicturePanel) cell(row, col int) image.Rectangle {
	corner := pn.Grid.Add(image.Pt(col*PictureCell, row*PictureCell))
	return image.Rectangle{Min: corner, Max: corner.Add(image.Pt(PictureCell-PictureGap, PictureCell-PictureGap))}
}

// cellMark is the mark of an after cell, "-" where the matrix has none.
func (p *Plan) cellMark(k Key) string {
	if c := p.After.Get(k); c != nil {
		return c.Predicted.Mark()
	}
	return notProbed
}

// PNG draws the after matrix: a panel per port, stacked, sources down and destinations across,
// each cell in its verdict's colour (the HTML page's) with its mark, the changed cells outlined
// in magenta, and a legend of the marks shown. PictureLayout says where each thing is.
func (p *Plan) PNG(w io.Writer) error {
	l, err := p.PictureLayout()
	if err != nil {
		return err
	}
	img := image.NewRGBA(image.Rect(0, 0, l.Width, l.Height))
	draw.Draw(img, img.Bounds(), image.NewUniform(paper), image.Point{}, draw.Src)
	drawText(img, l.header, image.Pt(PictureMargin, PictureMargin))
	changed := map[Key]bool{}
	for _, c := range p.Changes {
		changed[c.Key] = true
	}
	// Names sit in the middle of a row or column of cells.
	centre := (PictureCell - PictureGap - PictureLine) / 2
	for _, pn := range l.Panels {
		drawText(img, pn.Port.String(), image.Pt(PictureMargin, pn.Top))
		for j, to := range pn.Tos {
			drawVertical(img, pictureText(to), image.Pt(pn.Grid.X+j*PictureCell+centre, pn.Grid.Y-PictureMargin))
		}
		for i, from := range pn.Froms {
			label := pictureText(from)
			drawText(img, label, image.Pt(pn.Grid.X-PictureMargin-PictureChar*len(label), pn.Grid.Y+i*PictureCell+centre))
			for j, to := range pn.Tos {
				k := Key{From: from, To: to, Port: pn.Port}
				mark := p.cellMark(k)
				fill, _ := swatch(mark)
				drawCell(img, pn.cell(i, j), fill, mark, changed[k])
			}
		}
	}
	for _, line := range l.legend {
		r := image.Rect(PictureMargin, line.top, PictureMargin+PictureCell-PictureGap, line.top+PictureCell-PictureGap)
		if line.mark == "" {
			drawCell(img, r, paper, "", true)
		} else {
			fill, _ := swatch(line.mark)
			drawCell(img, r, fill, line.mark, false)
		}
		drawText(img, line.text, image.Pt(PictureMargin+PictureCell+PictureMargin, line.top+centre))
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("write plan picture: %w", err)
	}
	return nil
}

// drawCell fills a cell's square, outlined in the highlight when asked, and writes its mark in
// the middle.
func drawCell(img *image.RGBA, r image.Rectangle, fill color.RGBA, mark string, outlined bool) {
	inner := r
	if outlined {
		draw.Draw(img, r, image.NewUniform(highlight), image.Point{}, draw.Src)
		inner = r.Inset(PictureOutline)
	}
	draw.Draw(img, inner, image.NewUniform(fill), image.Point{}, draw.Src)
	if mark != "" {
		drawText(img, mark, image.Pt(r.Min.X+(r.Dx()-PictureChar)/2, r.Min.Y+(r.Dy()-PictureLine)/2))
	}
}

// drawText writes a line of text whose top left is at.
func drawText(dst draw.Image, s string, at image.Point) {
	d := font.Drawer{Dst: dst, Src: image.NewUniform(ink), Face: basicfont.Face7x13,
		Dot: fixed.P(at.X, at.Y+basicfont.Face7x13.Ascent)}
	d.DrawString(s)
}

// drawVertical writes a line of text turned a quarter anticlockwise, to read upwards: its left
// edge is at.X and its end at.Y.
func drawVertical(dst *image.RGBA, s string, at image.Point) {
	flat := image.NewRGBA(image.Rect(0, 0, PictureChar*len(s), PictureLine))
	drawText(flat, s, image.Point{})
	b := flat.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if _, _, _, a := flat.At(x, y).RGBA(); a != 0 {
				dst.Set(at.X+y, at.Y-1-x, flat.At(x, y))
			}
		}
	}
}

// pictureText is s in the characters the picture's font has: printable ASCII, "?" for any other.
func pictureText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r > '~' {
			return '?'
		}
		return r
	}, s)
}

// longest is the length of the longest name as the picture shows it.
func longest(names []string) int {
	n := 0
	for _, s := range names {
		n = max(n, len(pictureText(s)))
	}
	return n
}
