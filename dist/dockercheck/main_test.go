package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

// good is a small Dockerfile every check passes.
const good = `FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/app /usr/local/bin/app
USER 65532:65532
HEALTHCHECK --interval=30s CMD ["/usr/local/bin/app", "health"]
ENTRYPOINT ["/usr/local/bin/app"]
`

// TestCheckFinds: each broken variant of good fails with the named error
// and says why.
func TestCheckFinds(t *testing.T) {
	ctx := context.Background()
	if _, err := Check(ctx, "good", []byte(good), "/usr/local/bin/app"); err != nil {
		t.Fatalf("the good Dockerfile: %v", err)
	}
	for _, tc := range []struct {
		name, from, to string
		want           error
		says           string
	}{
		{"lower-case as", "AS build", "as build", ErrLint, "FromAsCasing"},
		{"shell-form entrypoint", `ENTRYPOINT ["/usr/local/bin/app"]`, `ENTRYPOINT /usr/local/bin/app`, ErrLint, "JSONArgsRecommended"},
		{"undefined variable", "WORKDIR /src", "WORKDIR /src\nENV X=$UNSET_VAR", ErrLint, "UndefinedVar"},
		{"unknown flag", "COPY --from=build", "COPY --frm=build", ErrBuild, "frm"},
		{"bad health check interval", "--interval=30s", "--interval=often", ErrBuild, "often"},
		{"unknown instruction", "WORKDIR /src", "WORKDIR /src\nCOPYY . .", ErrBuild, "COPYY"},
		{"no user", "USER 65532:65532\n", "", ErrImage, "root"},
		{"root user", "USER 65532:65532", "USER root", ErrImage, "root"},
		{"no health check", `HEALTHCHECK --interval=30s CMD ["/usr/local/bin/app", "health"]`, "", ErrImage, "HEALTHCHECK"},
		{"health check off", `HEALTHCHECK --interval=30s CMD ["/usr/local/bin/app", "health"]`, "HEALTHCHECK NONE", ErrImage, "HEALTHCHECK"},
		{"other entrypoint", `ENTRYPOINT ["/usr/local/bin/app"]`, `ENTRYPOINT ["/bin/sh"]`, ErrImage, "ENTRYPOINT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.from) {
				t.Fatalf("%q not in the good Dockerfile", tc.from)
			}
			df := strings.Replace(good, tc.from, tc.to, 1)
			_, err := Check(ctx, "bad", []byte(df), "/usr/local/bin/app")
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
}

// TestProjectDockerfile: the project's Dockerfile passes, with the
// image docs/server.md describes.
func TestProjectDockerfile(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-entrypoint", "/usr/local/bin/reach", "../../Dockerfile"}, &out); err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out.String()))
	dt, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Check(context.Background(), "Dockerfile", dt, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Image.User != "65532:65532" || r.Ops < 5 {
		t.Errorf("user %q, %d operations", r.Image.User, r.Ops)
	}
	for _, p := range []string{"4950/udp", "4950/tcp", "4951/udp", "443/tcp", "9100/tcp"} {
		if _, ok := r.Image.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed: %v", p, r.Image.ExposedPorts)
		}
	}
}

// TestUsage: no file is a usage error.
func TestUsage(t *testing.T) {
	if err := run(nil, &bytes.Buffer{}); !errors.Is(err, errNoFile) {
		t.Fatalf("err = %v", err)
	}
}
