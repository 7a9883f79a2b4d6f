module github.com/reachp2p/reach

go 1.26.8
