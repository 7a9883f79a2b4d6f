// Command dockercheck checks a Dockerfile where no Docker daemon runs
// (.ci/run, docs/server.md "Production"): it runs BuildKit's Dockerfile
// frontend, the code `docker build` itself runs, in process.
//
//   - Every rule of `docker build --check` is applied, on every stage; any
//     warning fails.
//   - The Dockerfile is converted into its build definition (LLB, the
//     graph of operations BuildKit would execute) and the final image's
//     configuration, which fails on what a build would refuse before its
//     first step: a syntax error, an unknown flag, a COPY --from naming no
//     stage, an instruction with bad arguments.
//   - That image configuration must run as a user other than root and
//     have a health check, and with -entrypoint its ENTRYPOINT must be the
//     one given.
//
// No registry is asked: every base image resolves to an empty linux/amd64
// image, so nothing depends on what a base image contains (its ENV, USER
// or HEALTHCHECK); the final image's user and health check must be set in
// the Dockerfile. Nothing is executed: a RUN that would fail is not
// found here, only by a real build.
//
//	go run . [-entrypoint /usr/local/bin/reach] ../../Dockerfile
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerui"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors of a check.
var (
	ErrLint   = errors.New("dockercheck: lint warnings")
	ErrBuild  = errors.New("dockercheck: the build definition cannot be made")
	ErrImage  = errors.New("dockercheck: the final image's configuration")
	errNoFile = errors.New("dockercheck: usage: dockercheck [-entrypoint PATH] DOCKERFILE")
)

// emptyImages resolves every base image to an empty linux/amd64 image
// (no registry is asked).
type emptyImages struct{}

func (emptyImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	img := ocispecs.Image{Platform: ocispecs.Platform{OS: "linux", Architecture: "amd64"},
		Config: ocispecs.ImageConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS: ocispecs.RootFS{Type: "layers"}}
	dt, err := json.Marshal(img)
	if err != nil {
		return "", "", nil, err
	}
	return ref, digest.FromBytes(dt), dt, nil
}

// Report is what a check found.
type Report struct {
	Warnings []string // lint warnings: rule, detail, line
	Ops      int      // operations of the build definition
	Image    dockerspec.DockerOCIImageConfig
}

// Check runs the checks on the Dockerfile dt (named name in messages).
// wantEntrypoint, if not empty, is the ENTRYPOINT's first word the image
// must have.
func Check(ctx context.Context, name string, dt []byte, wantEntrypoint string) (Report, error) {
	var r Report
	platform := ocispecs.Platform{OS: "linux", Architecture: "amd64"}
	// Where the Dockerfile comes from, as a build names it (the source
	// map's definition locates warnings and errors).
	src := llb.Local("dockerfile")
	srcDef, err := src.Marshal(ctx)
	if err != nil {
		return r, err
	}
	opt := func() dockerfile2llb.ConvertOpt {
		sm := llb.NewSourceMap(&src, name, "Dockerfile", dt)
		sm.Definition = srcDef
		return dockerfile2llb.ConvertOpt{
			Config:         dockerui.Config{TargetPlatforms: []ocispecs.Platform{platform}},
			SourceMap:      sm,
			TargetPlatform: &platform,
			MetaResolver:   emptyImages{},
		}
	}
	lint, err := dockerfile2llb.DockerfileLint(ctx, dt, opt())
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrBuild, err)
	}
	for _, w := range lint.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s:%d: %s: %s", name, line, w.RuleName, w.Detail))
	}
	if lint.Error != nil {
		return r, fmt.Errorf("%w: %s", ErrBuild, lint.Error.Message)
	}
	if len(r.Warnings) > 0 {
		return r, fmt.Errorf("%w:\n%s", ErrLint, strings.Join(r.Warnings, "\n"))
	}

	res, err := dockerfile2llb.Dockerfile2LLB(ctx, dt, opt())
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrBuild, err)
	}
	def, err := res.State.Marshal(ctx, llb.Platform(platform))
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrBuild, err)
	}
	r.Ops = len(def.Def)
	r.Image = res.Image.Config

	var problems []string
	switch u := r.Image.User; {
	case u == "", u == "root", u == "0", strings.HasPrefix(u, "root:"), strings.HasPrefix(u, "0:"):
		problems = append(problems, fmt.Sprintf("runs as root (USER %q)", u))
	}
	if hc := r.Image.Healthcheck; hc == nil || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
		problems = append(problems, "no HEALTHCHECK")
	}
	if wantEntrypoint != "" && (len(r.Image.Entrypoint) == 0 || r.Image.Entrypoint[0] != wantEntrypoint) {
		problems = append(problems, fmt.Sprintf("ENTRYPOINT %q, want %q first", r.Image.Entrypoint, wantEntrypoint))
	}
	if len(problems) > 0 {
		return r, fmt.Errorf("%w: %s", ErrImage, strings.Join(problems, "; "))
	}
	return r, nil
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("dockercheck", flag.ContinueOnError)
	entry := fs.String("entrypoint", "", "the ENTRYPOINT's first word the image must have")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errNoFile
	}
	dt, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	r, err := Check(context.Background(), fs.Arg(0), dt, *entry)
	if err != nil {
		return err
	}
	ports := make([]string, 0, len(r.Image.ExposedPorts))
	for p := range r.Image.ExposedPorts {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	fmt.Fprintf(out, "%s: no lint warnings; build definition of %d operations; image: user %s, entrypoint %q, cmd %q, healthcheck %q, ports %s\n",
		fs.Arg(0), r.Ops, r.Image.User, r.Image.Entrypoint, r.Image.Cmd, r.Image.Healthcheck.Test, strings.Join(ports, " "))
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
