# reach server in a small static image: docs/server.md, "Production".
#
#   docker build -t reach-server .
#   docker run -d --name reach --restart unless-stopped \
#     -p 4950:4950/udp -p 4950:4950/tcp -p 4951:4951/udp -p 443:443/tcp \
#     -p 127.0.0.1:9100:9100/tcp -v reach-state:/var/lib/reach \
#     reach-server server --metrics :9100 --public-addr 203.0.113.7
#   docker logs reach | grep 'reach server ready'

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo), so it runs on distroless/static. The state directory is
# made here because the final image has no shell to make it.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/reach ./cmd/reach \
	&& mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/reach /usr/local/bin/reach
COPY --from=build --chown=65532:65532 /out/state /var/lib/reach
# The server keeps its key here (the connect string survives restarts):
# mount a volume on it.
ENV STATE_DIRECTORY=/var/lib/reach
VOLUME ["/var/lib/reach"]
# distroless's nonroot (65532). Docker lets containers bind ports below
# 1024 without root (net.ipv4.ip_unprivileged_port_start=0 in the
# container's network namespace), so 443 works; with --network host it
# needs --cap-add NET_BIND_SERVICE or --tls-port 0.
USER 65532:65532
# UDP 4950: QUIC and STUN; TCP 4950 and 443: TLS; UDP 4951: the alternate
# STUN port; TCP 9100: /metrics and /healthz (publish it privately only).
EXPOSE 4950/udp 4950/tcp 4951/udp 443/tcp 9100/tcp
# /healthz over HTTP on --metrics (the default CMD's :9100): reach itself
# asks, as the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
	CMD ["/usr/local/bin/reach", "server", "healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/reach"]
CMD ["server", "--metrics", ":9100"]
