module github.com/tensorlake/tl-agent

go 1.26.0

require (
	github.com/coder/websocket v1.8.14
	github.com/hashicorp/yamux v0.1.2
	github.com/mattn/go-isatty v0.0.20
	github.com/rs/zerolog v1.35.1
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)

require github.com/mattn/go-colorable v0.1.14 // indirect
