# parlor. `make run` serves on PORT (default 8080) with the embedded store, or
# on Redis with REDIS_URL; `make test` runs every test (it installs
# redis-server first where it is missing).
#
#   make run PORT=8082
#   make redis                                   # a local Redis on REDIS_PORT (6379)
#   make run PORT=8081 REDIS_URL=redis://127.0.0.1:6379
#   make client PORT=8082 ROOM=general NAME=alice

CARGO ?= cargo
REDIS_PORT ?= 6379
RUN_ENV := $(if $(PORT),PORT=$(PORT)) $(if $(BIND),BIND=$(BIND)) \
           $(if $(HISTORY),HISTORY=$(HISTORY)) $(if $(REDIS_URL),REDIS_URL=$(REDIS_URL))

.PHONY: build run test lint fmt client redis redis-server clean

build:
	$(CARGO) build --release

run: build
	$(RUN_ENV) ./target/release/parlor

# The tests start redis-server processes of their own, on free ports.
test: redis-server
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

client:
	$(CARGO) run --release --example client -- --url ws://localhost:$(or $(PORT),8080) \
	  --room $(or $(ROOM),general) --user $(or $(NAME),$(USER),guest)

# Installs redis-server (Debian's package) when the machine lacks it.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server is missing: installing Debian's redis-server package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# A local Redis for the demo, with an append-only file in target/redis.
redis: redis-server
	@if redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  echo "a Redis already answers on port $(REDIS_PORT)"; \
	else \
	  mkdir -p target/redis && \
	  redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes --appendonly yes \
	    --appendfsync everysec --dir $(CURDIR)/target/redis --logfile $(CURDIR)/target/redis/redis.log && \
	  echo "Redis started on port $(REDIS_PORT) (data in target/redis; stop it with redis-cli -p $(REDIS_PORT) shutdown)"; \
	fi

clean:
	$(CARGO) clean
