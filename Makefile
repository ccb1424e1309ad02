# parlor. `make run` serves on PORT (default 8080) with the embedded store, or
# on Redis with REDIS_URL; `make test` runs every test (it installs
# redis-server, chromium and chromedriver first where they are missing).
#
#   make run PORT=8082
#   make redis                                   # a local Redis on REDIS_PORT (6379)
#   make run PORT=8081 REDIS_URL=redis://127.0.0.1:6379
#   make client PORT=8082 ROOM=general NAME=alice

CARGO ?= cargo
REDIS_PORT ?= 6379
RUN_ENV := $(if $(PORT),PORT=$(PORT)) $(if $(BIND),BIND=$(BIND)) \
           $(if $(HISTORY),HISTORY=$(HISTORY)) $(if $(REDIS_URL),REDIS_URL=$(REDIS_URL))

.PHONY: build run test lint fmt client deps redis clean

build:
	$(CARGO) build --release

run: build
	$(RUN_ENV) ./target/release/parlor

# The tests start redis-server, chromedriver and headless Chromium processes
# of their own, on free ports.
test: deps
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

client:
	$(CARGO) run --release --example client -- --url ws://localhost:$(or $(PORT),8080) \
	  --room $(or $(ROOM),general) --user $(or $(NAME),$(USER),guest)

# Debian packages the tests need, as command=package; `make deps` installs
# the ones whose command is missing.
DEPS := redis-server=redis-server chromium=chromium chromedriver=chromium-driver

deps:
	@missing=""; for pair in $(DEPS); do command -v $${pair%%=*} >/dev/null || missing="$$missing $${pair#*=}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

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

clean:
	$(CARGO) clean
