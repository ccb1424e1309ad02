# parlor. `make run` serves on PORT (default 8080) with the embedded store, or
# on Redis with REDIS_URL; `make test` runs every test (it installs
# redis-server, nginx, chromium, chromedriver and axe-core first where they are missing).
#
#   make run PORT=8082
#   make redis                                   # a local Redis on REDIS_PORT (6379)
#   make run PORT=8081 REDIS_URL=redis://127.0.0.1:6379
#   make client PORT=8082 ROOM=general NAME=alice
#   make cluster                                 # a local Redis Cluster on ports 7000-7005
#   make bench                                   # parlor against Socket.IO: docs/BENCHMARKS.md
#   make soak                                    # the fault suite, 10 minutes
#   make bench-storm                             # 1,000 clients reconnecting, 60 s
#   make fuzz FUZZ_SECONDS=60                    # cargo-fuzz on each parser, 60 s each
#   make fuzz-props                              # the parsers' property tests, 200,000 cases

CARGO ?= cargo
REDIS_PORT ?= 6379
RUN_ENV := $(if $(PORT),PORT=$(PORT)) $(if $(BIND),BIND=$(BIND)) \
           $(if $(HISTORY),HISTORY=$(HISTORY)) $(if $(REDIS_URL),REDIS_URL=$(REDIS_URL))

.PHONY: build run test lint audit fmt client deps redis cluster bench bench-presence bench-hostile bench-storm soak fuzz fuzz-cmin fuzz-props clean

build:
	$(CARGO) build --release

run: build
	exec env $(RUN_ENV) ./target/release/parlor

# The tests start redis-server, chromedriver and headless Chromium processes
# of their own, on free ports, and run the example client (built first).
test: deps
	$(CARGO) build --bins --examples
	$(CARGO) test --all-targets
	node --experimental-websocket --test clients/js/test/

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@$(MAKE) --no-print-directory audit

# Dependencies against the RustSec advisory database. Its host cannot be
# reached from here, so the check reads a local snapshot (ADVISORY_DB) and
# never fetches; cargo-audit is installed first where it is missing.
ADVISORY_DB ?= $(firstword $(wildcard ../shared/advisory-db /work/shared/advisory-db))

audit:
	@test -n "$(ADVISORY_DB)" || { echo "no advisory database: set ADVISORY_DB to a copy of RustSec's advisory-db"; exit 1; }
	@command -v cargo-audit >/dev/null || $(CARGO) install cargo-audit --locked
	$(CARGO) audit --db $(ADVISORY_DB) --no-fetch --deny warnings

fmt:
	$(CARGO) fmt --all

client:
	$(CARGO) run --release --example client -- --url ws://localhost:$(or $(PORT),8080) \
	  --room $(or $(ROOM),general) --user $(or $(NAME),$(USER),guest)

# Debian packages the tests need, as command=package; `make deps` installs
# the ones whose command is missing.
DEPS := redis-server=redis-server chromium=chromium chromedriver=chromium-driver nginx=nginx

deps:
	@missing=""; for pair in $(DEPS); do command -v $${pair%%=*} >/dev/null || missing="$$missing $${pair#*=}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || \
	  { echo "the tests of clients/js need Node.js 20 or later (node --version)"; exit 1; }
	@test -f tests/axe/node_modules/axe-core/axe.min.js || npm ci --prefix tests/axe --no-audit --no-fund

# A local Redis for the demo, with an append-only file in target/redis.
redis:
	@$(MAKE) --no-print-directory deps DEPS=redis-server=redis-server
	@if redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  echo "a Redis already answers on port $(REDIS_PORT)"; \
	else \
	  mkdir -p target/redis && \
	  redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes --appendonly yes \
	    --appendfsync everysec --dir $(CURDIR)/target/redis --logfile $(CURDIR)/target/redis/redis.log && \
	  echo "Redis started on port $(REDIS_PORT) (data in target/redis; stop it with redis-cli -p $(REDIS_PORT) shutdown)"; \
	fi

# A local Redis Cluster for the demo: three masters with a replica each on
# ports CLUSTER_PORT (7000) to CLUSTER_PORT+5, data in target/cluster.
CLUSTER_PORT ?= 7000
CLUSTER_PORTS = $(shell seq $(CLUSTER_PORT) $$(($(CLUSTER_PORT) + 5)))

cluster:
	@$(MAKE) --no-print-directory deps DEPS=redis-server=redis-server
	@for port in $(CLUSTER_PORTS); do \
	  redis-cli -p $$port ping >/dev/null 2>&1 && continue; \
	  mkdir -p target/cluster/$$port && \
	  redis-server --port $$port --bind 127.0.0.1 --daemonize yes --cluster-enabled yes \
	    --cluster-node-timeout 5000 --appendonly yes --dir $(CURDIR)/target/cluster/$$port \
	    --logfile $(CURDIR)/target/cluster/$$port/redis.log || exit 1; \
	done
	@sleep 1
	@if redis-cli -p $(CLUSTER_PORT) cluster info | grep -q cluster_state:ok; then \
	  echo "a Redis Cluster already answers on ports $(CLUSTER_PORT) and up"; \
	else \
	  redis-cli --cluster create $(foreach port,$(CLUSTER_PORTS),127.0.0.1:$(port)) \
	    --cluster-replicas 1 --cluster-yes >/dev/null && \
	  until redis-cli -p $(CLUSTER_PORT) cluster info | grep -q cluster_state:ok; do sleep 0.2; done && \
	  echo "Redis Cluster started on ports $(CLUSTER_PORT) to $$(($(CLUSTER_PORT) + 5)) (stop each node with redis-cli -p PORT shutdown)"; \
	fi

# The benchmark: parlor against Socket.IO 4.8 on a redis-server of
# its own (BENCH_REDIS_PORT, 6400) and ports from BENCH_PORT (19000) on, then
# parlor on its memory store against the floor (bench/floor.rs, the `floor`
# example), then parlor on Redis Clusters of one and three shards it starts
# on ports from BENCH_CLUSTER_PORT (6410) on, then a reconnect storm of 10,000
# clients against parlor and Socket.IO; about 16 minutes (more while other
# work keeps the machine busy); it writes docs/BENCHMARKS.md and
# docs/bench-latency.svg. QUICK=1 runs smaller sizes (three shards only,
# 1,000 storm clients) in 4 to 5 minutes and writes to target/bench/ instead.
bench: bench/socketio/node_modules/.package-lock.json
	@$(MAKE) --no-print-directory deps DEPS="redis-server=redis-server redis-benchmark=redis-tools"
	$(CARGO) build --release --bins --examples
	ulimit -n $$(ulimit -Hn) && python3 bench/run.py $(if $(QUICK),--quick)

# Socket.IO and its Redis adapters for the benchmark, exactly as locked, into
# an ignored folder; again whenever the lock file changes.
bench/socketio/node_modules/.package-lock.json: bench/socketio/package-lock.json
	npm ci --prefix bench/socketio --no-audit --no-fund

# The fault suite: instances over Redis through fault-injecting proxies,
# members and publishers, random faults for SOAK_SECONDS (600), then a
# check that every acked message reached every member once, in order.
soak:
	@$(MAKE) --no-print-directory deps DEPS=redis-server=redis-server
	$(CARGO) build --release --bins --examples
	./target/release/examples/soak --seconds $(or $(SOAK_SECONDS),600)

# A reconnect storm: 1,000 members over two instances, each dropping its
# connection (no close frame) every 5-15 s and resuming on a random
# instance while messages flow, for STORM_SECONDS (60), no other fault.
bench-storm:
	@$(MAKE) --no-print-directory deps DEPS=redis-server=redis-server
	$(CARGO) build --release --bins --examples
	./target/release/examples/soak --seconds $(or $(STORM_SECONDS),60) --instances 2 \
	  --rooms 10 --members 50 --rate 100 --faults 0 --drops

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, on the nightly toolchain)
# of the frame decoder, the query and path parsers, the HTTP body's fields
# and the token reader: FUZZ_SECONDS (60) for each of FUZZ_TARGETS, from the
# corpus kept in fuzz/corpus/<target>, which a run adds its new finds to;
# `make fuzz-cmin` shrinks the corpora again. A crash stops the run non-zero
# and leaves its input in fuzz/artifacts/<target>. cargo-fuzz is installed
# first where it is missing.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame query body token
FUZZ_CARGO ?= cargo +nightly

fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
	  $(FUZZ_CARGO) fuzz run $$target fuzz/corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

fuzz-cmin:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
	  $(FUZZ_CARGO) fuzz cmin $$target fuzz/corpus/$$target || exit 1; \
	done

# The property tests of every parser of client input (tests/decoder_fuzz.rs,
# a few cases in `make test`), for longer: FUZZ_CASES runs of each property
# (default 200000), in release.
fuzz-props:
	PROPTEST_CASES=$(or $(FUZZ_CASES),200000) $(CARGO) test --release --test decoder_fuzz

# README's memory formula against HOSTILE_CLIENTS (19,000) clients that
# never read, half asking for pages, half sending an unfinished largest
# frame; fails when parlor's memory grows past the formula.
bench-hostile:
	$(CARGO) build --release --bins --examples
	ulimit -n $$(ulimit -Hn) && ./target/release/examples/hostile --clients $(or $(HOSTILE_CLIENTS),19000)

# Redis time per presence change in a room of 20,000 users.
bench-presence:
	@$(MAKE) --no-print-directory deps DEPS=redis-server=redis-server
	python3 bench/presence_cost.py

clean:
	$(CARGO) clean
