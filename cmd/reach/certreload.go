package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certCheckEvery bounds how often a handshake looks at the certificate
// files' modification times: a handshake flood costs no more than one
// stat of each a second.
const certCheckEvery = time.Second

// certReloader serves --tls-cert/--tls-key and loads them again when
// either file's modification time changes (a renewal by certbot or
// cert-manager, which write new files or swap a symlink), or when Reload
// is called (SIGHUP). A pair that fails to load (a half-written renewal)
// keeps the certificate in use and is tried again at the next change.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	certMod   time.Time // modification times of the pair in use
	keyMod    time.Time
	lastCheck time.Time
	failedMod [2]time.Time // the times of a pair that failed, not retried until they change
}

// newCertReloader loads the pair; it fails if it cannot.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	cm, km, err := r.modTimes()
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	if err := r.load(cm, km); err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return r, nil
}

// modTimes stats both files (following symlinks).
func (r *certReloader) modTimes() (cert, key time.Time, err error) {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// load reads the pair and, if it is good, puts it in use. The caller
// holds r.mu, or r is not shared yet.
func (r *certReloader) load(cm, km time.Time) error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.failedMod = [2]time.Time{cm, km}
		return err
	}
	r.cert, r.certMod, r.keyMod = &c, cm, km
	r.failedMod = [2]time.Time{}
	return nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.lastCheck) >= certCheckEvery {
		r.lastCheck = now
		r.reloadLocked(false)
	}
	return r.cert, nil
}

// Reload loads the pair now, changed or not (SIGHUP). It reports whether
// the new pair is in use.
func (r *certReloader) Reload() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked(true)
}

// reloadLocked loads the pair if forced or its files changed; it logs the
// outcome and reports whether a new pair is in use.
func (r *certReloader) reloadLocked(force bool) bool {
	cm, km, err := r.modTimes()
	if err != nil {
		if force {
			r.log.Warn("TLS certificate not reloaded; keeping the one in use", "err", err)
		}
		return false
	}
	changed := !cm.Equal(r.certMod) || !km.Equal(r.keyMod)
	if !force && (!changed || r.failedMod == [2]time.Time{cm, km}) {
		return false
	}
	if err := r.load(cm, km); err != nil {
		r.log.Warn("TLS certificate not reloaded; keeping the one in use", "cert", r.certFile, "err", err)
		return false
	}
	args := []any{"cert", r.certFile}
	if leaf := r.cert.Leaf; leaf != nil {
		args = append(args, "subject", leaf.Subject.String(), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if force {
		args = append(args, "why", "SIGHUP")
	}
	r.log.Info("TLS certificate loaded", args...)
	return true
}
