#!/usr/bin/env bash
# Runs README.md's "Two machines" walkthrough on loopback and prints the
# transcript shown there: three shells (server, alice, bob) on one
# machine, each with its own config directory (so its own default key),
# as two machines have. Needs go, curl and python3 (the web server alice
# forwards to). Run from the repository: bash docs/walkthrough.sh
# PORT, WEB_PORT and LOCAL_PORT (14950, 18000, 18080) change the ports it
# uses (cmd/reach's TestWalkthrough picks free ones). With SERVER_NS,
# ALICE_NS and BOB_NS (network namespaces; root) each shell's commands run
# in its own, as on three machines, and SERVER_IP is the address the
# server listens on (127.0.0.1): TestWalkthroughLab runs it so in the lab.
set -u
cd "$(dirname "$0")/.."
W=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/bin" "$W/srv" "$W/alice" "$W/bob"
go build -o "$W/bin/reach" ./cmd/reach || exit 1
export PATH=$W/bin:$PATH REACH_KEY=
unset REACH_SERVER
PORT=${PORT:-14950}
WEB_PORT=${WEB_PORT:-18000}
LOCAL_PORT=${LOCAL_PORT:-18080}
SERVER_IP=${SERVER_IP:-127.0.0.1}
say() { local who=$1; shift; echo "$who\$ $*"; }
# as WHO: WHO's directory, config directory (so default key) and, with
# WHO's *_NS set, network namespace: $X prefixes WHO's commands.
as() {
	cd "$W/$1" && export XDG_CONFIG_HOME=$W/$1/config
	local ns
	case $1 in srv) ns=${SERVER_NS:-} ;; alice) ns=${ALICE_NS:-} ;; bob) ns=${BOB_NS:-} ;; esac
	X=
	[ -z "$ns" ] || X="ip netns exec $ns"
}
# waitfor FILE TEXT: until FILE holds TEXT (10 s at most).
waitfor() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done; }

as srv
say server "reach server --listen $SERVER_IP:$PORT --tls-port 0"
$X reach server --listen "$SERVER_IP:$PORT" --tls-port 0 --state "$W/srv/state" >out.txt 2>err.txt &
pids+=($!)
for _ in $(seq 50); do [ -s out.txt ] && break; sleep 0.1; done
cat out.txt
CS=$(cut -d' ' -f4 out.txt)
[ -n "$CS" ] || { cat err.txt >&2; exit 1; }
echo

as alice
say alice "export REACH_SERVER=$CS"
export REACH_SERVER=$CS
say alice "reach listen > notes.txt"
$X reach listen >notes.txt 2>listen.err &
LIS=$!
pids+=($LIS)
waitfor listen.err listening
cat listen.err
ID=$(head -1 listen.err | cut -d' ' -f2)
echo

as bob
say bob "export REACH_SERVER=$CS"
say bob "echo 'hello from bob' | reach dial $ID"
echo 'hello from bob' | $X reach dial "$ID" 2>&1
echo "(exit $?)"
wait "$LIS"
echo

as alice
say alice "cat notes.txt"
cat notes.txt
echo

as bob
mkdir -p photos
head -c 3000000 /dev/urandom >photos/beach.jpg
head -c 1200000 /dev/urandom >photos/dunes.jpg
say bob "reach send photos"
$X reach send photos >send.out 2>send.err &
SEND=$!
pids+=($SEND)
for _ in $(seq 50); do [ -s send.out ] && break; sleep 0.1; done
cat send.err
# The short code: the second line's third word ("  reach recv CODE").
C=$(sed -n 2p send.err | awk '{print $3}')
echo

as alice
say alice "reach recv --yes --out inbox $C"
$X reach recv --yes --out inbox "$C" 2>&1
say alice "ls inbox/photos"
ls inbox/photos
wait "$SEND"
echo
echo "(bob's reach send, after:)"
tail -n +5 "$W/bob/send.err"
echo

as bob
say bob "reach id"
BOB=$($X reach id)
echo "$BOB"
echo

as alice
mkdir -p site
echo "hello over reach" >site/hello.txt
$X python3 -m http.server $WEB_PORT --bind 127.0.0.1 --directory site >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do $X curl -s -o /dev/null "http://127.0.0.1:$WEB_PORT/" && break; sleep 0.1; done
say alice "python3 -m http.server $WEB_PORT --bind 127.0.0.1 &"
say alice "reach listen --forward 127.0.0.1:$WEB_PORT --allow $BOB"
$X reach listen --forward 127.0.0.1:$WEB_PORT --allow "$BOB" 2>fwd.err &
FWD=$!
pids+=($FWD)
waitfor fwd.err serving
cat fwd.err
echo

as bob
say bob "reach dial --local $LOCAL_PORT $ID &"
$X reach dial --local $LOCAL_PORT "$ID" 2>local.err &
LOC=$!
pids+=($LOC)
waitfor local.err forwarding
cat local.err
say bob "curl -s http://127.0.0.1:$LOCAL_PORT/hello.txt"
$X curl -s http://127.0.0.1:$LOCAL_PORT/hello.txt
kill -INT "$LOC" "$FWD"
wait "$LOC" "$FWD" 2>/dev/null
exit 0
