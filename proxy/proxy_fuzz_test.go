package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzConnectAnswer plays a proxy that answers CONNECT with the fuzzer's
// bytes and closes (docs/security.md, "Fuzzing"). Properties: the request
// sent is a CONNECT for the target with the credentials; connect does not
// hang; a non-2xx answer is a *StatusError with the answer's status code;
// after a 2xx answer, the connection returned reads exactly the bytes
// that followed the answer's header.
func FuzzConnectAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nProxy-Agent: squid\r\n\r\n\x16\x03\x01early bytes"))
	f.Add([]byte("HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\nContent-Length: 4\r\n\r\nnope"))
	f.Add([]byte("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n0123456789"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 2000 OK\r\n\r\n"))
	f.Add([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
	f.Add([]byte{})
	const target = "relay.example.com:443"
	u := &url.URL{Scheme: "http", Host: "proxy:3128", User: url.UserPassword("user", "p:w")}
	f.Fuzz(func(t *testing.T, answer []byte) {
		client, server := net.Pipe()
		defer client.Close()
		done := make(chan error, 1)
		go func() {
			defer server.Close()
			req, err := http.ReadRequest(bufio.NewReader(server))
			if err != nil {
				done <- err
				return
			}
			if req.Method != http.MethodConnect || req.Host != target || req.Header.Get("Proxy-Authorization") != "Basic dXNlcjpwOnc=" {
				done <- errors.New("bad request: " + req.Method + " " + req.Host)
				return
			}
			server.Write(answer)
			done <- nil
		}()
		client.SetDeadline(time.Now().Add(10 * time.Second))
		conn, err := connect(client, u, "proxy:3128", target)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connect hangs on %q", answer)
		}
		// What a well-behaved reader sees: the answer, then the rest.
		br := bufio.NewReader(bytes.NewReader(answer))
		resp, perr := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			var se *StatusError
			switch {
			case errors.As(err, &se):
				if perr != nil || se.StatusCode != resp.StatusCode || se.StatusCode/100 == 2 || se.Target != target {
					t.Fatalf("status error %v for %q", se, answer)
				}
			case !strings.Contains(err.Error(), "reading the CONNECT answer") || perr == nil:
				t.Fatalf("error %v for %q (parsed: %v)", err, answer, perr)
			}
			client.Close()
			<-done
			return
		}
		if perr != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("connect accepted %q (parsed: %v)", answer, perr)
		}
		resp.Body.Close()
		want, _ := io.ReadAll(br)
		got, rerr := io.ReadAll(conn)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			t.Fatalf("reading after the answer: %v", rerr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("after the answer read %q, want %q", got, want)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
