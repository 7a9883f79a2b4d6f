package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

const serverHealthHelp = `usage: reach server healthcheck [URL]

Asks a reach server's /healthz (served over HTTP on --metrics) and exits 0
if it answers 200 "ok" within --timeout, else prints why and exits 1: the
health check of the Docker image, which has no curl. URL defaults to
http://127.0.0.1:9100/healthz (the image's --metrics :9100).
`

// defaultHealthURL is /healthz on the Docker image's --metrics address.
const defaultHealthURL = "http://127.0.0.1:9100/healthz"

// errUnhealthy: /healthz answered, but not 200 "ok".
var errUnhealthy = errors.New("unhealthy")

// runServerHealth is `reach server healthcheck`.
func runServerHealth(args []string) error {
	fs := newFlagSet("server healthcheck", serverHealthHelp)
	timeout := fs.Duration("timeout", 4*time.Second, "how long to wait for the answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usagef("server healthcheck", "one URL at most, got %d arguments", fs.NArg())
	}
	url := defaultHealthURL
	if fs.NArg() == 1 {
		url = fs.Arg(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return checkHealth(ctx, url)
}

// checkHealth GETs url and wants 200 with the body "ok".
func checkHealth(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("%w: %s answered %s %q", errUnhealthy, url, resp.Status, body)
	}
	return nil
}
