# parlor: `make run` serves on PORT (default 8080); `make test` runs every test.
# Variables: PORT, BIND, HISTORY (see `parlor --help`; each is also read from
# the environment by parlor itself).

CARGO ?= cargo
RUN_ENV := $(if $(PORT),PORT=$(PORT)) $(if $(BIND),BIND=$(BIND)) $(if $(HISTORY),HISTORY=$(HISTORY))

.PHONY: build run test lint fmt client clean

build:
	$(CARGO) build --release

run: build
	$(RUN_ENV) ./target/release/parlor

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# A terminal client: make client PORT=8082 ROOM=general NAME=alice
client:
	$(CARGO) run --release --example client -- --url ws://localhost:$(or $(PORT),8080) --room $(or $(ROOM),general) --user $(or $(NAME),$(USER),guest)

clean:
	$(CARGO) clean
