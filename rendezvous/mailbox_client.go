package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Named errors of the short-code mailbox. Test with errors.Is; a
// *CodeError carries the details.
var (
	// ErrNoMailbox: the server keeps no short codes (an older server, or
	// CodeConfig.Disable).
	ErrNoMailbox = errors.New("rendezvous: the server keeps no short codes")
	// ErrCodeUnknown: no code waits under this slot number (mistyped, or
	// long expired).
	ErrCodeUnknown = errors.New("rendezvous: no such code")
	// ErrCodeWrong: a code waits under this number, but the rest of the
	// code is not its own (CodeError.AttemptsLeft say how many more
	// tries it takes before it is burnt).
	ErrCodeWrong = errors.New("rendezvous: wrong code")
	// ErrCodeUsed: the code was claimed already (codes are single use),
	// or withdrawn by its sender.
	ErrCodeUsed = errors.New("rendezvous: code already used")
	// ErrCodeBurnt: the code took too many wrong guesses and is void.
	ErrCodeBurnt = errors.New("rendezvous: code burnt by wrong guesses")
	// ErrCodeExpired: the code was not claimed in time.
	ErrCodeExpired = errors.New("rendezvous: code expired")
)

// CodeError is a mailbox request's failure, from the server. It unwraps
// to one of the named errors above, ErrBusy, ErrRateLimited or
// ErrBadRequest.
type CodeError struct {
	Code         string // the CODE_RESULT error code, see docs/protocol.md
	Reason       string
	AttemptsLeft int // ErrCodeWrong: wrong tries left before the code is burnt
}

func (e *CodeError) Error() string {
	msg := e.Unwrap().Error()
	if e.Code == codeCodeWrong {
		msg += fmt.Sprintf(" (%d attempts left)", e.AttemptsLeft)
	}
	return msg
}

// Unwrap returns the named error for the code.
func (e *CodeError) Unwrap() error {
	switch e.Code {
	case codeNoMailbox:
		return ErrNoMailbox
	case codeCodeUnknown:
		return ErrCodeUnknown
	case codeCodeWrong:
		return ErrCodeWrong
	case codeCodeUsed:
		return ErrCodeUsed
	case codeCodeBurnt:
		return ErrCodeBurnt
	case codeCodeExpired:
		return ErrCodeExpired
	case codeBusy:
		return ErrBusy
	case codeRateLimited:
		return ErrRateLimited
	}
	return ErrBadRequest
}

// Mailbox is the short-code mailbox of the server a Client is registered
// with (Client.Mailbox). It moves opaque bytes: package shortcode derives
// proofs and seals blobs.
type Mailbox struct{ c *Client }

// Mailbox returns the mailbox of the client's servers.
func (c *Client) Mailbox() *Mailbox { return &Mailbox{c: c} }

// CodeReceipt says where a code was stored.
type CodeReceipt struct {
	Server ServerAddr    // the server that keeps it
	Slot   uint32        // its slot number there
	TTL    time.Duration // how long it waits for its receiver
}

// Put reserves a slot at the current server, asks seal for the proof and
// the blob to keep under it (seal knows the server and the slot number
// only then), and stores them for ttl (zero: the server's default, 10
// min; the server caps it). Errors: ErrNoMailbox, ErrBusy (the server's
// or this address's cap), ErrRateLimited, seal's, ErrServerLost.
func (m *Mailbox) Put(ctx context.Context, ttl time.Duration, seal func(server ServerAddr, slot uint32) (proof, blob []byte, err error)) (CodeReceipt, error) {
	cc, err := m.conn(ctx)
	if err != nil {
		return CodeReceipt{}, err
	}
	r, err := m.c.codeRequest(ctx, cc, codeBody{Op: "reserve"})
	if err != nil {
		return CodeReceipt{}, err
	}
	slot := r.Slot
	proof, blob, err := seal(cc.server, slot)
	if err != nil {
		m.c.codeRequest(ctx, cc, codeBody{Op: "drop", Slot: slot})
		return CodeReceipt{}, err
	}
	r, err = m.c.codeRequest(ctx, cc, codeBody{Op: "put", Slot: slot, Proof: proof, Blob: blob, TTLMS: ttl.Milliseconds()})
	if err != nil {
		return CodeReceipt{}, err
	}
	return CodeReceipt{Server: cc.server, Slot: slot, TTL: time.Duration(r.ExpiresMS) * time.Millisecond}, nil
}

// Claim asks the current server for the blob under slot, with the proof
// that prove derives for that server. The blob comes once: the slot is
// spent. Errors: ErrCodeUnknown, ErrCodeWrong, ErrCodeUsed, ErrCodeBurnt,
// ErrCodeExpired, ErrNoMailbox, ErrRateLimited, prove's, ErrServerLost.
func (m *Mailbox) Claim(ctx context.Context, slot uint32, prove func(server ServerAddr) ([]byte, error)) ([]byte, ServerAddr, error) {
	cc, err := m.conn(ctx)
	if err != nil {
		return nil, ServerAddr{}, err
	}
	proof, err := prove(cc.server)
	if err != nil {
		return nil, ServerAddr{}, err
	}
	r, err := m.c.codeRequest(ctx, cc, codeBody{Op: "claim", Slot: slot, Proof: proof})
	if err != nil {
		return nil, ServerAddr{}, err
	}
	return r.Blob, cc.server, nil
}

// Drop withdraws a code this client put, if it still waits (a sender that
// stops offering). Its receiver then gets ErrCodeUsed.
func (m *Mailbox) Drop(ctx context.Context, r CodeReceipt) error {
	cc, err := m.conn(ctx)
	if err != nil {
		return err
	}
	if cc.server != r.Server {
		return nil // that registration is gone; the code expires there
	}
	_, err = m.c.codeRequest(ctx, cc, codeBody{Op: "drop", Slot: r.Slot})
	return err
}

func (m *Mailbox) conn(ctx context.Context) (*clientConn, error) {
	if m == nil || m.c == nil {
		return nil, ErrNoMailbox
	}
	cc, err := m.c.waitConn(ctx)
	if err != nil {
		return nil, err
	}
	if !cc.codes {
		return nil, &CodeError{Code: codeNoMailbox}
	}
	return cc, nil
}

// codeRequest sends one CODE request on cc and waits for its result.
func (c *Client) codeRequest(ctx context.Context, cc *clientConn, b codeBody) (codeResultBody, error) {
	b.ID = c.nextReq.Add(1)
	ch := cc.expect(b.ID)
	if ch == nil {
		return codeResultBody{}, fmt.Errorf("%w: %v", ErrServerLost, cc.Err())
	}
	defer cc.unexpect(b.ID)
	if err := cc.write(typeCode, b); err != nil {
		return codeResultBody{}, err
	}
	select {
	case r := <-ch:
		switch {
		case r.err != nil:
			return codeResultBody{}, r.err
		case r.code == nil:
			return codeResultBody{}, &CodeError{Code: codeBadRequest, Reason: "RESULT for a CODE request"}
		case r.code.Error != "":
			return codeResultBody{}, &CodeError{Code: r.code.Error, Reason: r.code.Reason, AttemptsLeft: r.code.AttemptsLeft}
		}
		return *r.code, nil
	case <-ctx.Done():
		return codeResultBody{}, ctx.Err()
	}
}
