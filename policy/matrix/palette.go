package matrix

import (
	"fmt"
	"image/color"
	"strconv"
	"strings"

	"github.com/netpact/netpact/policy"
)

// palette is the colour of each mark (policy.Legend), and of "-" where a table has no cell: the
// HTML page and the picture colour a verdict alike, so that a reader of one can read the other.
// None of these is highlight.
var palette = []struct {
	mark, class string
	colour      color.RGBA
}{
	{".", "allowed", color.RGBA{0x8f, 0xd1, 0x8f, 0xff}},
	{"X", "dropped", color.RGBA{0xe5, 0x73, 0x73, 0xff}},
	{"L", "http", color.RGBA{0x64, 0xb5, 0xf6, 0xff}},
	{"K", "kafka", color.RGBA{0xff, 0xb7, 0x4d, 0xff}},
	{"D", "dns", color.RGBA{0xb3, 0x9d, 0xdb, 0xff}},
	{"N", "fqdn", color.RGBA{0x4d, 0xb6, 0xac, 0xff}},
	{"A", "audited", color.RGBA{0xff, 0xf1, 0x76, 0xff}},
	{notProbed, "none", color.RGBA{0xe0, 0xe0, 0xe0, 0xff}},
}

var (
	// highlight marks a changed cell, in the page and the picture: a colour used for nothing
	// else, so that a screenshot's regions of it are the changed cells.
	highlight = color.RGBA{0xff, 0x00, 0xc8, 0xff}
	// unknownColour is a mark's that the palette lacks: a new outcome still renders, and the
	// palette test names it.
	unknownColour = color.RGBA{0xbd, 0xbd, 0xbd, 0xff}
	ink           = color.RGBA{0x20, 0x20, 0x20, 0xff}
	paper         = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

// Highlight is the colour of a changed cell's border in the page and its outline in the picture:
// tests find changed cells by it.
func Highlight() color.RGBA { return highlight }

// Paper is the background of the page and the picture.
func Paper() color.RGBA { return paper }

// swatch is a mark's colour and CSS class.
func swatch(mark string) (color.RGBA, string) {
	for _, p := range palette {
		if p.mark == mark {
			return p.colour, p.class
		}
	}
	return unknownColour, "unknown"
}

func hex(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

// legendEntry is one mark of the legend, with what it means.
type legendEntry struct {
	Mark, Meaning string
}

// legend is policy.Legend split into marks and meanings, and "-" for a pair without a cell.
func legend() ([]legendEntry, error) {
	var out []legendEntry
	for _, line := range policy.Legend() {
		quoted, err := strconv.QuotedPrefix(line)
		if err != nil {
			return nil, fmt.Errorf("legend line %q: %w", line, err)
		}
		mark, err := strconv.Unquote(quoted)
		if err != nil {
			return nil, fmt.Errorf("legend line %q: %w", line, err)
		}
		out = append(out, legendEntry{Mark: mark, Meaning: strings.TrimSpace(line[len(quoted):])})
	}
	return append(out, legendEntry{Mark: notProbed, Meaning: "no cell: the pair was not probed"}), nil
}
