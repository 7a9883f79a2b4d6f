package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/reachp2p/reach/identity"
)

// NewToken makes a relay token for peer that is valid until expiry, in the
// TURN REST style: "<expiry unix seconds>:<MAC>", where MAC is the
// unpadded base64url HMAC-SHA256 under secret of "<peer ID>|<expiry>". An
// operator's web service that knows the secret hands tokens to its users;
// the relay checks them without any state.
func NewToken(secret []byte, peer identity.PeerID, expiry time.Time) string {
	exp := strconv.FormatInt(expiry.Unix(), 10)
	return exp + ":" + tokenMAC(secret, peer, exp)
}

func tokenMAC(secret []byte, peer identity.PeerID, exp string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(peer.String() + "|" + exp))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckToken checks token for peer against every secret (so that a secret
// can be rotated: issue with the new one, accept both for a while). It
// returns nil, ErrBadToken (malformed, or no secret matches) or
// ErrTokenExpired (a secret matches but expiry has passed at now).
func CheckToken(secrets [][]byte, peer identity.PeerID, token string, now time.Time) error {
	exp, mac, ok := strings.Cut(token, ":")
	if !ok {
		return ErrBadToken
	}
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || sec <= 0 {
		return ErrBadToken
	}
	for _, s := range secrets {
		if hmac.Equal([]byte(tokenMAC(s, peer, exp)), []byte(mac)) {
			if now.Unix() >= sec {
				return ErrTokenExpired
			}
			return nil
		}
	}
	return ErrBadToken
}
