package matrix

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Heatmap geometry, in pixels. basicfont's face is 7×13.
const (
	hmMargin = 12
	hmCellW  = 116
	hmCellH  = 50
	hmLabelW = 194 // row labels: 26 characters ("port-restricted/linux-host")
	hmTitleH = 52
	hmHeadH  = 36 // column labels: two lines (the kind, its variant)
	hmLegend = 64
	hmBorder = 4 // flagged cells
	hmCharW  = 7
	hmLine   = 14
	hmMinW   = 1100 // the legend's two lines
)

// Strategy colours; text on them is white.
var strategyColor = map[string]color.RGBA{
	Direct:    {0x2e, 0x7d, 0x32, 0xff},
	UPnP:      {0x00, 0x83, 0x8f, 0xff},
	Holepunch: {0x15, 0x65, 0xc0, 0xff},
	Supernode: {0xef, 0x6c, 0x00, 0xff},
	TURN:      {0xad, 0x14, 0x57, 0xff},
	Relay:     {0x6a, 0x1b, 0x9a, 0xff},
}

var (
	colFailed  = color.RGBA{0x21, 0x21, 0x21, 0xff}
	colOther   = color.RGBA{0x75, 0x75, 0x75, 0xff}
	colEmpty   = color.RGBA{0xee, 0xee, 0xee, 0xff}
	colFlag    = color.RGBA{0xff, 0x17, 0x44, 0xff}
	colRung    = color.RGBA{0xff, 0xd6, 0x00, 0xff}
	colText    = color.RGBA{0x21, 0x21, 0x21, 0xff}
	colOnColor = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

func cellColor(d Direction) color.RGBA {
	if d.Connected == 0 {
		return colFailed
	}
	if c, ok := strategyColor[d.Strategy]; ok {
		return c
	}
	return colOther
}

// WritePNG draws the heatmap: dialer kinds as rows, listener kinds as
// columns, each measured cell coloured by the winning strategy with its
// connect time in round trips and its throughput; cells worse than
// possible get a red border.
func (r *Result) WritePNG(w io.Writer) error {
	n := len(r.Kinds)
	width := max(2*hmMargin+hmLabelW+n*hmCellW, 2*hmMargin+len(r.topology())*hmCharW, hmMinW)
	height := 2*hmMargin + hmTitleH + hmHeadH + n*hmCellH + hmLegend
	img := image.NewRGBA(image.Rect(0, 0, width, max(width/3, height)))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)

	x0, y0 := hmMargin, hmMargin
	unit := "round trips"
	if !r.inRTTs() {
		unit = "ms"
	}
	title := "reach connectivity matrix"
	if r.Variant != "" {
		title += " (" + r.Variant + ")"
	}
	text(img, x0, y0+12, colText, title+": winning strategy, Dial -> first echoed byte in "+unit+", one stream's Mbit/s")
	text(img, x0, y0+28, colText, r.topology())
	text(img, x0, y0+44, colText, fmt.Sprintf("rows: dialer    columns: listener    %d dial(s) per cell, fresh nodes; %s; %s",
		r.Runs, r.Started.UTC().Format("2006-01-02"), r.GoVersion))

	gx, gy := x0+hmLabelW, y0+hmTitleH+hmHeadH
	for j, k := range r.Kinds {
		name, variant, _ := strings.Cut(string(k), "/")
		centered(img, gx+j*hmCellW, hmCellW, gy-21, colText, name)
		if variant != "" {
			centered(img, gx+j*hmCellW, hmCellW, gy-7, colText, "/"+variant)
		}
	}
	for i, dk := range r.Kinds {
		cy := gy + i*hmCellH
		text(img, x0, cy+hmCellH/2+4, colText, string(dk))
		for j, lk := range r.Kinds {
			cx := gx + j*hmCellW
			rect := image.Rect(cx+1, cy+1, cx+hmCellW-1, cy+hmCellH-1)
			d, ok := r.Lookup(dk, lk)
			if !ok {
				fill(img, rect, colEmpty)
				continue
			}
			fill(img, rect, cellColor(d))
			if d.Worse {
				c := colFlag
				if d.Severity == SeverityRung {
					c = colRung
				}
				for k := range hmBorder {
					outline(img, rect.Inset(k), c)
				}
			}
			lines := cellLines(d, r.inRTTs())
			ty := cy + (hmCellH-len(lines)*hmLine)/2 + 11
			for _, l := range lines {
				centered(img, cx, hmCellW, ty, colOnColor, l)
				ty += hmLine
			}
		}
	}

	ly := gy + n*hmCellH + 18
	lx := x0
	legend := []struct {
		c    color.RGBA
		name string
	}{
		{strategyColor[Direct], Direct}, {strategyColor[UPnP], UPnP}, {strategyColor[Holepunch], Holepunch},
		{strategyColor[Supernode], Supernode}, {strategyColor[TURN], TURN}, {strategyColor[Relay], Relay},
		{colFailed, "not connected"}, {colEmpty, "not measured"},
	}
	for _, e := range legend {
		fill(img, image.Rect(lx, ly, lx+14, ly+14), e.c)
		text(img, lx+20, ly+11, colText, e.name)
		lx += 20 + len(e.name)*hmCharW + 18
	}
	ly += 24
	fill(img, image.Rect(x0, ly, x0+14, ly+14), colFlag)
	fill(img, image.Rect(x0+hmBorder, ly+hmBorder, x0+14-hmBorder, ly+14-hmBorder), colEmpty)
	text(img, x0+20, ly+11, colText, "worse than possible: a failure or a forwarded path")
	lx = x0 + 20 + 52*hmCharW
	fill(img, image.Rect(lx, ly, lx+14, ly+14), colRung)
	fill(img, image.Rect(lx+hmBorder, ly+hmBorder, lx+14-hmBorder, ly+14-hmBorder), colEmpty)
	text(img, lx+20, ly+11, colText, "another peer-to-peer rung won (same kind of path)   ~: mixed outcomes")
	return png.Encode(w, img)
}

// cellLines is the text of one cell: connect time in round trips, or in
// ms when !rtts.
func cellLines(d Direction, rtts bool) []string {
	if d.Connected == 0 {
		return []string{"not connected", fmt.Sprintf("0/%d", len(d.Attempts))}
	}
	s := d.Strategy
	if len(d.Strategies) > 1 || d.Connected < len(d.Attempts) {
		s = "~" + s
	}
	if d.Strategy == Relay {
		if l := relayLinks(d); l != "" {
			s += " " + l
		}
	}
	lines := []string{s, fmt.Sprintf("%.1f RTT", d.ConnectRTTs)}
	if !rtts {
		lines[1] = fmt.Sprintf("%.0f ms", d.ConnectMedianMS)
	}
	if d.Mbps > 0 {
		lines = append(lines, fmt.Sprintf("%.0f Mbit/s", d.Mbps))
	}
	return lines
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func outline(img *image.RGBA, r image.Rectangle, c color.Color) {
	for x := r.Min.X; x < r.Max.X; x++ {
		img.Set(x, r.Min.Y, c)
		img.Set(x, r.Max.Y-1, c)
	}
	for y := r.Min.Y; y < r.Max.Y; y++ {
		img.Set(r.Min.X, y, c)
		img.Set(r.Max.X-1, y, c)
	}
}

// text draws s with its baseline at y.
func text(img *image.RGBA, x, y int, c color.Color, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// centered draws s centred in the span [x, x+w), cut to fit.
func centered(img *image.RGBA, x, w, y int, c color.Color, s string) {
	if max := (w - 4) / hmCharW; len(s) > max {
		s = s[:max]
	}
	text(img, x+(w-len(s)*hmCharW)/2, y, c, s)
}
