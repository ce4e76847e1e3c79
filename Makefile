# tl-agent: make build | run | test | bench | lint | fuzz
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO      ?= go
FUZZTIME ?= 5s
export CGO_ENABLED ?= 0

.PHONY: all build incubator run run-container image test test-unit test-integration bench lint fuzz deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

## incubator: rebuild the incubator stub blobs the agent embeds
## (launch/stub: amd64 and arm64, gcc and its aarch64 cross compiler);
## TestStubReproducible checks that they match their source.
incubator:
	./launch/stub/build.sh

## run: tl-proxy on localhost plus tl-agent as PID 1 of a fresh sandbox (root);
## settings TL_HTTP_ADDR, TL_UPLINK_ADDR, TL_SSH_ADDR, TL_SANDBOX_ID, TL_RUN
## (README). Fails non-zero with the cause when the sandbox does not connect.
run: build
	./scripts/run-local.sh

## run-container: the same, with the agent in the sandbox image under podman
## (or docker); falls back to namespaces when no engine is installed.
run-container: build
	TL_RUN=container ./scripts/run-local.sh

## image: the sandbox, desktop and proxy images, built with podman or docker
## (docs/image.md). Without a registry the bases are made locally.
image:
	./image/build.sh sandbox desktop proxy

deps:
	./scripts/deps.sh

## test: everything, as CI runs it: lint, unit tests with -race, end to
## end, then every fuzz target for FUZZTIME.
test: deps lint
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 60m ./...
	cd internal/yamux && $(GO) test -count=1 -skip '^TestHalfCloseSessionShutdown$$' . # the yamux copy is its own module; the skip: FORK.md
	GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME)

test-unit: lint
	CGO_ENABLED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

test-integration: deps
	$(GO) test -count=1 -timeout 60m -v ./integration/

## bench: data-path benchmarks against OpenSSH and local floors.
bench: deps build
	$(GO) run ./cmd/tl-bench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## fuzz: every fuzz target (found with go test -list), FUZZTIME each;
## `make fuzz FUZZTIME=5m` for a longer hunt.
fuzz:
	GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin .run
