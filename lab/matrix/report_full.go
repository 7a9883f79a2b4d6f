package matrix

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is a run of several variants (`reach lab matrix`), one Result
// each, in the order they ran.
type Report struct {
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	// Command is how the run was started, Commit what it measured (both
	// filled in by the caller; may be empty).
	Command string `json:"command,omitempty"`
	Commit  string `json:"commit,omitempty"`
	// Variants are the variants' results.
	Variants []*Result `json:"variants"`
}

// Flagged counts the directions, over every variant, that did worse
// than possible.
func (rep *Report) Flagged() int {
	n := 0
	for _, r := range rep.Variants {
		n += len(r.Flagged())
	}
	return n
}

// pngFile is the heatmap's file name of a variant: matrix.png for the main
// one (or a result of no variant), matrix-<variant>.png for the others.
func (r *Result) pngFile() string {
	if r.Variant == "" || r.Variant == VariantMain {
		return PNGFile
	}
	return strings.TrimSuffix(PNGFile, ".png") + "-" + r.Variant + ".png"
}

// WriteFiles writes into dir (created if missing) the Markdown of every
// variant (matrix.md), the JSON (matrix.json) and one heatmap per variant
// (matrix.png for main, matrix-<variant>.png for the others).
func (rep *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, MarkdownFile), []byte(rep.Markdown()), 0o644); err != nil {
		return err
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, JSONFile), js.Bytes(), 0o644); err != nil {
		return err
	}
	for _, r := range rep.Variants {
		var img bytes.Buffer
		if err := r.WritePNG(&img); err != nil {
			return fmt.Errorf("matrix: %s: %w", r.pngFile(), err)
		}
		if err := os.WriteFile(filepath.Join(dir, r.pngFile()), img.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// ReadReport reads a report WriteJSON wrote, or a single Result (the
// format before variants), e.g. to render it again.
func ReadReport(r io.Reader) (*Report, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("matrix: reading a report: %w", err)
	}
	if len(rep.Variants) > 0 {
		return &rep, nil
	}
	res, err := ReadJSON(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if len(res.Directions) == 0 {
		return nil, fmt.Errorf("matrix: reading a report: no variants and no directions")
	}
	return &Report{Started: res.Started, Duration: res.Duration, Commit: res.Commit, Variants: []*Result{res}}, nil
}

// Markdown renders the report: a summary of every variant, then each
// variant's own tables (Result.Markdown) under a heading of its own.
func (rep *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	dirs, connected, best := 0, 0, 0
	for _, r := range rep.Variants {
		for _, d := range r.Directions {
			dirs++
			if d.Connected == len(d.Attempts) && len(d.Attempts) > 0 {
				connected++
			}
			if !d.Worse {
				best++
			}
		}
	}
	p("Variants: **%d**; directions: **%d**; every attempt connected: **%d**; as good as possible: **%d**; flagged: **%d**. ",
		len(rep.Variants), dirs, connected, best, dirs-best)
	p("Started %s, %s in all", rep.Started.UTC().Format("2006-01-02 15:04 UTC"), rep.Duration)
	if rep.Commit != "" {
		p(", commit %s", rep.Commit)
	}
	if rep.Command != "" {
		p(", `%s`", rep.Command)
	}
	p(".\n\n")
	p("| variant | topology | kinds | directions | dials | every attempt connected | as good as possible | flagged | time |\n")
	p("|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Variants {
		dials, conn, ok := 0, 0, 0
		for _, d := range r.Directions {
			dials += len(d.Attempts)
			if d.Connected == len(d.Attempts) && len(d.Attempts) > 0 {
				conn++
			}
			if !d.Worse {
				ok++
			}
		}
		p("| [%s](#%s) | %s | %d | %d | %d | %d | %d | %d | %s |\n", variantName(r), anchor(r), r.topology(),
			len(r.Kinds), len(r.Directions), dials, conn, ok, len(r.Directions)-ok, r.Duration)
	}
	for _, r := range rep.Variants {
		p("\n### %s\n\n", variantName(r))
		b.WriteString(r.Markdown())
	}
	return b.String()
}

func variantName(r *Result) string {
	if r.Variant == "" {
		return "matrix"
	}
	return r.Variant
}

// anchor is the Markdown heading anchor of a variant's section.
func anchor(r *Result) string { return strings.ToLower(variantName(r)) }
