# udm: the two commands are `make run` and `make test`. Everything they need is installed here,
# idempotently, on a fresh Debian 12 machine (as root, or with sudo).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PG_MAJOR      := 15
# PGROOT=<dir>: build and test udm in a private copy of PostgreSQL under <dir> (tests/pgroot.sh)
# instead of the system one, so that checkouts side by side do not replace each other's udm.so
PGROOT        ?=
PGBIN         := $(PGROOT)/usr/lib/postgresql/$(PG_MAJOR)/bin
export PGBIN
PG_CONFIG     := /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
PG_REGRESS    := /usr/lib/postgresql/$(PG_MAJOR)/lib/pgxs/src/test/regress/pg_regress
PGRX_VERSION  := 0.18.0
APT_PACKAGES  := postgresql-$(PG_MAJOR) postgresql-server-dev-$(PG_MAJOR) libclang-dev clang pkg-config sudo pgbouncer openssl chromium
export PATH   := $(HOME)/.cargo/bin:$(PATH)

ROOT          := $(CURDIR)
CLUSTER       := $(ROOT)/tests/cluster.sh
RUN_DIR       := $(ROOT)/target/cluster
RUN_PORT      ?= 5499
RUN_DB        ?= udm_demo
# udm-server next to the make run cluster: its address, and its configuration
SERVER_LISTEN ?= 127.0.0.1:8080
SERVER_BIN    := $(ROOT)/target/release/udm-server
SERVER_ENV    := UDM_SERVER_DATABASE_URL="host=$(RUN_DIR)/sock port=$(RUN_PORT) dbname=$(RUN_DB) user=udm_server" \
                 UDM_SERVER_LISTEN=$(SERVER_LISTEN) UDM_SERVER_JWT_SECRET_FILE=$(RUN_DIR)/jwt-secret UDM_SERVER_LOG_FORMAT=text
# make run's master key of field encryption and its TLS certificate (self-signed for localhost),
# made once, next to the cluster; a cluster made before these existed keeps its settings
# (make stop && rm -rf target/cluster to start over)
RUN_KEY       := $(ROOT)/target/run-master.key
RUN_TLS       := $(ROOT)/target/run-tls
RUN_CONF      := "shared_preload_libraries = 'udm'" "udm.encryption_key_file = '$(RUN_KEY)'" \
                 "ssl = on" "ssl_cert_file = '$(RUN_TLS)/server.crt'" "ssl_key_file = '$(RUN_TLS)/server.key'"
TEST_DIR      := $(ROOT)/target/test-cluster
TEST_PORT     ?= 5498
# the second cluster of the restore test (tests/tests/restore.rs); the standby and pgbouncer of
# the standby and pooler tests listen on unix sockets of their own only (STANDBY_PORT names one)
RESTORE_PORT  ?= 5496
STANDBY_PORT  ?= 5494
# the cluster a tenant moves into in the transfer test (tests/tests/transfer.rs)
TRANSFER_PORT ?= 5493
# the clusters of the encryption test without a master key and with a new one (tests/tests/encryption.rs)
NOKEY_PORT    ?= 5492
REKEY_PORT    ?= 5490
# the master key of field encryption for the test cluster: 64 hex digits, readable by the server
# only (tests/tests/encryption.rs); made once, outside the cluster directory a fresh start removes
TEST_KEY      := $(ROOT)/target/test-master.key
# Citus (tests/citus.sh): its source release, built once into a copy of PostgreSQL (CITUS_PGROOT)
# that holds udm too; a coordinator and two workers on CITUS_PORT, +1 and +2. With Citus installed
# from its packages, CITUS_PGROOT=/ uses the system PostgreSQL (udm is then installed there).
CITUS_VERSION := 12.1.12
CITUS_SHA256  := a344da15513601e718a268d907e1c86e43a69eb243398b929f65a4580723f552
# the tarball: next to the checkout (../shared/vendor), or where this project's machines keep it
CITUS_TARBALL ?= $(or $(firstword $(wildcard $(abspath $(ROOT)/../shared/vendor/citus-$(CITUS_VERSION).tar.gz) \
                   /work/shared/vendor/citus-$(CITUS_VERSION).tar.gz)),$(abspath $(ROOT)/../shared/vendor/citus-$(CITUS_VERSION).tar.gz))
CITUS_APT     := libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev
CITUS_BUILD   := $(ROOT)/target/citus-build
CITUS_PGROOT  ?= $(ROOT)/target/citus/root
CITUS_PGBIN   := $(patsubst //%,/%,$(CITUS_PGROOT)/usr/lib/postgresql/$(PG_MAJOR)/bin)
CITUS_SO      := $(patsubst //%,/%,$(CITUS_PGROOT)/usr/lib/postgresql/$(PG_MAJOR)/lib/citus.so)
CITUS_DIR     := $(ROOT)/target/citus-clusters
CITUS_PORT    ?= 5485
# whether make test runs the Citus tier: Citus is installed in CITUS_PGROOT, or its tarball is here
CITUS_AVAILABLE = $(or $(wildcard $(CITUS_SO)),$(wildcard $(CITUS_TARBALL)))
BENCH_DIR     := $(ROOT)/target/bench-cluster
BENCH_PORT    ?= 5497
IS_ROOT       := $(filter 0,$(shell id -u))
APT           := $(if $(IS_ROOT),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
PGRX_INSTALL  := cargo pgrx install --release --pg-config $(PG_CONFIG) $(if $(IS_ROOT),,--sudo)

.PHONY: help deps install run run-server stop-server stop test unit regress integration server upgrade bench clean-clusters fmt lint \
        citus citus-test citus-tier citus-bench

help:
	@echo "make run    - install everything, start a local cluster with udm and demo data and udm-server, print how to connect and a token per demo user"
	@echo "make test   - run every test tier (core unit tests, pg_regress golden files, driver integration tests, udm-server over HTTP, upgrade)"
	@echo "make bench  - run the benchmarks in bench/ (ratios against their baselines)"
	@echo "make citus  - build Citus $(CITUS_VERSION) once from its source tarball into a copy of PostgreSQL under target/, with udm"
	@echo "make citus-test - a Citus coordinator and two workers from that copy, and udm's checks on them (tests/citus.sh)"
	@echo "make citus-bench - bench/citus on those clusters: a tenant on a Citus worker vs single-node udm, and udm_move_tenant"
	@echo "make stop   - stop udm-server and the local cluster started by make run"

## ------------------------------------------------------------------ set-up

deps: target/.deps-ok

target/.deps-ok: Makefile
	@mkdir -p target
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	    echo "== installing Debian packages: $(APT_PACKAGES)"; \
	    $(APT) update -qq; \
	    $(APT) install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VERSION)"; then \
	    echo "== installing cargo-pgrx $(PGRX_VERSION) (about 9 minutes)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	fi
	@if ! grep -qs '^pg$(PG_MAJOR) *= *"$(PG_CONFIG)"' $(HOME)/.pgrx/config.toml; then \
	    echo "== cargo pgrx init"; \
	    cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG) >/dev/null; \
	fi
	@touch $@

install: deps
ifeq ($(PGROOT),)
	@echo "== building and installing udm into PostgreSQL $(PG_MAJOR)"
	@$(PGRX_INSTALL) 2>&1 | grep -Ev '^\s*(Compiling|Checking|Blocking)' || { echo "install failed"; exit 1; }
else
	@echo "== building and installing udm into the copy of PostgreSQL $(PG_MAJOR) under $(PGROOT)"
	@tests/pgroot.sh install $(PGROOT) 2>&1 | grep -Ev '^\s*(Compiling|Checking|Blocking)' || { echo "install failed"; exit 1; }
endif

## ------------------------------------------------------------------ make run

run: install
	@$(MAKE) --no-print-directory $(RUN_KEY) $(RUN_TLS)/server.crt
	@$(CLUSTER) start $(RUN_DIR) $(RUN_PORT) keep $(RUN_CONF)
	@if ! $(CLUSTER) psql $(RUN_DIR) $(RUN_PORT) -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$(RUN_DB)'" | grep -q 1; then \
	    $(CLUSTER) psql $(RUN_DIR) $(RUN_PORT) -d postgres -qc "CREATE DATABASE $(RUN_DB)"; \
	fi
	@$(CLUSTER) psql $(RUN_DIR) $(RUN_PORT) -d $(RUN_DB) -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION IF NOT EXISTS udm" -f sql/demo.sql
	@echo
	@echo "udm is running (PostgreSQL $(PG_MAJOR), data in $(RUN_DIR)/data, log in $(RUN_DIR)/server.log)."
	@echo "Connect with:"
	@echo
	@echo "    $(PGBIN)/psql -h $(RUN_DIR)/sock -p $(RUN_PORT) -U postgres $(RUN_DB)"
	@echo
	@echo "or over TCP with TLS, checking the server's certificate (made at set-up, self-signed):"
	@echo
	@echo "    $(PGBIN)/psql 'host=localhost port=$(RUN_PORT) dbname=$(RUN_DB) user=postgres sslmode=verify-full sslrootcert=$(RUN_TLS)/server.crt'"
	@echo
	@echo "(make stop stops it)"
	@$(MAKE) --no-print-directory run-server

# udm-server: its database role (udm-server setup-role), a secret of its own, then the server
run-server:
	@echo
	@echo "== building udm-server"
	@cargo build -q --release -p udm-server
	@if [ ! -s $(RUN_DIR)/jwt-secret ]; then (umask 077; openssl rand -hex 32 > $(RUN_DIR)/jwt-secret); fi
	@$(SERVER_BIN) setup-role "host=$(RUN_DIR)/sock port=$(RUN_PORT) dbname=$(RUN_DB) user=postgres" udm_server >/dev/null
	@$(MAKE) --no-print-directory stop-server
	@: > $(RUN_DIR)/udm-server.out
	@$(SERVER_ENV) nohup $(SERVER_BIN) >$(RUN_DIR)/udm-server.out 2>$(RUN_DIR)/udm-server.log & echo $$! > $(RUN_DIR)/udm-server.pid
	@for i in $$(seq 100); do grep -q listening $(RUN_DIR)/udm-server.out && break; sleep 0.1; done; \
	    grep -q listening $(RUN_DIR)/udm-server.out || { cat $(RUN_DIR)/udm-server.log; exit 1; }
	@echo
	@echo "udm-server is running: GraphQL at http://$(SERVER_LISTEN)/graphql (open it in a browser for the explorer), subscriptions at ws://$(SERVER_LISTEN)/graphql (log in $(RUN_DIR)/udm-server.log)."
	@echo "Tokens for 24 hours (HS256, the secret in $(RUN_DIR)/jwt-secret):"
	@for u in acme:demo@acme.test studio:alice@studio.test studio:bob@studio.test studio:carol@studio.test; do \
	    printf '\n    %s in %s:\n    %s\n' "$${u#*:}" "$${u%%:*}" "$$($(SERVER_ENV) $(SERVER_BIN) token $${u%%:*} $${u#*:} 86400)"; \
	done
	@echo
	@echo "Try:"
	@echo
	@echo "    curl -s http://$(SERVER_LISTEN)/graphql -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' \\"
	@echo "         -d '{\"query\": \"{ productCollection { nodes { name price } } }\"}'"

stop-server:
	@if [ -s $(RUN_DIR)/udm-server.pid ]; then \
	    pid=$$(cat $(RUN_DIR)/udm-server.pid); \
	    if kill -0 $$pid 2>/dev/null && grep -qs udm-server /proc/$$pid/cmdline; then \
	        kill -TERM $$pid; for i in $$(seq 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	        echo "stopped udm-server ($$pid)"; \
	    fi; \
	    rm -f $(RUN_DIR)/udm-server.pid; \
	fi

stop: stop-server
	@$(CLUSTER) stop $(RUN_DIR)
	@echo "stopped the cluster in $(RUN_DIR)"

## ------------------------------------------------------------------ make test

# graphql-js, the GraphQL reference implementation, for the integration tier's client check
GRAPHQL_JS    := tests/graphql-js/node_modules/graphql/package.json

$(GRAPHQL_JS): tests/graphql-js/package.json tests/graphql-js/package-lock.json
	@echo "== installing graphql-js for the tests (npm ci)"
	@npm ci --prefix tests/graphql-js --no-audit --no-fund --silent
	@touch $@

# @apidevtools/swagger-parser (and Ajv), the OpenAPI validator of the integration tier's
# udm_openapi() test (tests/tests/openapi.rs)
OPENAPI_JS    := tests/openapi/node_modules/@apidevtools/swagger-parser/package.json

$(OPENAPI_JS): tests/openapi/package.json tests/openapi/package-lock.json
	@echo "== installing the OpenAPI validator for the tests (npm ci)"
	@npm ci --prefix tests/openapi --no-audit --no-fund --silent
	@touch $@

# the npm graphql-ws client, for udm-server's subscription tests
GRAPHQL_WS    := server/tests/ws/node_modules/graphql-ws/package.json

$(GRAPHQL_WS): server/tests/ws/package.json server/tests/ws/package-lock.json
	@echo "== installing the graphql-ws client for the tests (npm ci)"
	@npm ci --prefix server/tests/ws --no-audit --no-fund --silent
	@touch $@

# puppeteer-core, which drives Debian's chromium (APT_PACKAGES; it downloads no browser), for
# udm-server's explorer test in a real browser
PUPPETEER     := server/tests/browser/node_modules/puppeteer-core/package.json

$(PUPPETEER): server/tests/browser/package.json server/tests/browser/package-lock.json
	@echo "== installing puppeteer-core for the browser test (npm ci)"
	@PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix server/tests/browser --no-audit --no-fund --silent
	@touch $@

test: deps $(GRAPHQL_JS) $(OPENAPI_JS) $(GRAPHQL_WS) $(PUPPETEER)
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory install
	@$(MAKE) --no-print-directory $(TEST_KEY)
	@$(CLUSTER) start $(TEST_DIR) $(TEST_PORT) fresh "fsync = off" "synchronous_commit = off" "udm.bcrypt_cost = 4" \
	    "shared_preload_libraries = 'udm'" "udm.encryption_key_file = '$(TEST_KEY)'"
	@trap '$(CLUSTER) stop $(TEST_DIR)' EXIT; \
	    $(MAKE) --no-print-directory regress && $(MAKE) --no-print-directory integration && \
	    $(MAKE) --no-print-directory server
	@$(MAKE) --no-print-directory upgrade
	@$(MAKE) --no-print-directory citus-tier
	@echo "== all test tiers passed"

$(TEST_KEY) $(RUN_KEY):
	@mkdir -p $(dir $@)
	@umask 077 && openssl rand -hex 32 > $@.tmp && mv $@.tmp $@
	@if [ "$$(id -u)" = 0 ]; then chown postgres:postgres $@; fi

# a self-signed certificate for localhost (clients check it with sslmode=verify-full and
# sslrootcert=<it>); the key readable by the server only
$(RUN_TLS)/server.crt:
	@mkdir -p $(RUN_TLS)
	@umask 077 && openssl req -new -x509 -days 3650 -nodes -newkey rsa:2048 -subj "/CN=localhost" \
	    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	    -keyout $(RUN_TLS)/server.key -out $@.tmp 2>/dev/null && chmod 0644 $@.tmp && mv $@.tmp $@
	@if [ "$$(id -u)" = 0 ]; then chown postgres:postgres $(RUN_TLS)/server.key $@; fi

unit:
	@echo "== tier 1: udm-core unit tests (no PostgreSQL)"
	@cargo test -q -p udm-core 2>&1 | grep -E "test result|FAILED|panicked|error" ; test $${PIPESTATUS[0]} -eq 0

regress:
	@echo "== tier 2: pg_regress golden files (tests/pg_regress)"
	@rm -rf target/regress && mkdir -p target/regress
	@tests=$$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$$//' | sort); \
	    $(PG_REGRESS) --bindir=$(PGBIN) --host=$(TEST_DIR)/sock --port=$(TEST_PORT) --user=postgres \
	        --inputdir=tests/pg_regress --outputdir=target/regress --dbname=udm_regress \
	        --load-extension=udm $$tests || { cat target/regress/regression.diffs; exit 1; }

integration:
	@echo "== tier 3: integration tests over the postgres driver (tests/tests)"
	@$(CLUSTER) psql $(TEST_DIR) $(TEST_PORT) -d postgres -q -c "DROP DATABASE IF EXISTS udm_it" -c "CREATE DATABASE udm_it"
	@$(CLUSTER) psql $(TEST_DIR) $(TEST_PORT) -d udm_it -q -c "CREATE EXTENSION udm"
	@UDM_TEST_HOST=$(TEST_DIR)/sock UDM_TEST_PORT=$(TEST_PORT) UDM_TEST_DB=udm_it \
	    UDM_RESTORE_PORT=$(RESTORE_PORT) UDM_STANDBY_PORT=$(STANDBY_PORT) UDM_TRANSFER_PORT=$(TRANSFER_PORT) \
	    UDM_NOKEY_PORT=$(NOKEY_PORT) UDM_REKEY_PORT=$(REKEY_PORT) \
	    cargo test -q -p udm-tests -- --test-threads=4
	@echo "== tier 3: the audit, access, GraphQL and tenant transfer suites again, with tenants whose audit log is batched (udm.audit_batches)"
	@UDM_TEST_HOST=$(TEST_DIR)/sock UDM_TEST_PORT=$(TEST_PORT) UDM_TEST_DB=udm_it UDM_TEST_AUDIT_BATCHES=1 \
	    UDM_TRANSFER_PORT=$(TRANSFER_PORT) \
	    cargo test -q -p udm-tests --test audit --test audit_batches --test links_history --test events_race \
	      --test access --test graphql --test transfer -- --test-threads=4

server: $(GRAPHQL_WS) $(PUPPETEER)
	@echo "== tier 3b: udm-server, the binary over HTTP and WebSocket and its explorer in headless Chromium, against the test cluster (server/tests)"
	@$(CLUSTER) psql $(TEST_DIR) $(TEST_PORT) -d postgres -q -c "DROP DATABASE IF EXISTS udm_server_it" -c "CREATE DATABASE udm_server_it"
	@$(CLUSTER) psql $(TEST_DIR) $(TEST_PORT) -d udm_server_it -q -c "CREATE EXTENSION udm"
	@UDM_TEST_HOST=$(TEST_DIR)/sock UDM_TEST_PORT=$(TEST_PORT) UDM_TEST_DB=udm_server_it \
	    cargo test -q -p udm-server -- --test-threads=4

upgrade:
	@echo "== tier 4: upgrade from the previous release (tests/upgrade.sh)"
	@PG_MAJOR=$(PG_MAJOR) UDM_BUILD_ROOT=$(PGROOT) tests/upgrade.sh

## ------------------------------------------------------------------ Citus

# Citus built once from its source release (never into the system PostgreSQL): unpacked and
# compiled under target/citus-build (without LLVM bitcode), then installed into a copy of
# PostgreSQL (tests/pgroot.sh make) that gets udm too. A CITUS_PGROOT that holds citus.so already
# (a packaged Citus: CITUS_PGROOT=/) is used as it is.
citus: deps
	@if [ ! -f $(CITUS_SO) ]; then \
	    if [ ! -f $(CITUS_BUILD)/.built-$(CITUS_VERSION) ]; then \
	        test -f $(CITUS_TARBALL) || { echo "no Citus: $(CITUS_SO) is missing and so is $(CITUS_TARBALL) (CITUS_TARBALL=<file> or CITUS_PGROOT=<root with Citus>)"; exit 1; }; \
	        echo "$(CITUS_SHA256)  $(CITUS_TARBALL)" | sha256sum -c --quiet - || { echo "$(CITUS_TARBALL): wrong sha256"; exit 1; }; \
	        if ! dpkg -s $(CITUS_APT) >/dev/null 2>&1; then \
	            echo "== installing Debian packages: $(CITUS_APT)"; \
	            $(APT) update -qq; \
	            $(APT) install -y -qq $(CITUS_APT) >/dev/null; \
	        fi; \
	        echo "== building Citus $(CITUS_VERSION) (once, about 3 minutes; log in $(CITUS_BUILD)/build.log)"; \
	        rm -rf $(CITUS_BUILD) && mkdir -p $(CITUS_BUILD); \
	        tar -xzf $(CITUS_TARBALL) -C $(CITUS_BUILD); \
	        (cd $(CITUS_BUILD)/citus-$(CITUS_VERSION) && ./configure PG_CONFIG=$(PG_CONFIG) && \
	            $(MAKE) -j2 with_llvm=no) >$(CITUS_BUILD)/build.log 2>&1 || { tail -30 $(CITUS_BUILD)/build.log; exit 1; }; \
	        touch $(CITUS_BUILD)/.built-$(CITUS_VERSION); \
	    fi; \
	    echo "== installing Citus $(CITUS_VERSION) into the copy of PostgreSQL under $(CITUS_PGROOT)"; \
	    tests/pgroot.sh make $(CITUS_PGROOT); \
	    $(MAKE) -s -C $(CITUS_BUILD)/citus-$(CITUS_VERSION) install with_llvm=no DESTDIR=$(CITUS_PGROOT) >$(CITUS_BUILD)/install.log 2>&1 \
	        || { tail -30 $(CITUS_BUILD)/install.log; exit 1; }; \
	fi
	@echo "== building and installing udm into $(CITUS_PGROOT)"
	@tests/pgroot.sh install $(CITUS_PGROOT) 2>&1 | grep -Ev '^\s*(Compiling|Checking|Blocking)' || { echo "install failed"; exit 1; }

# make test's tier 5: when Citus is there or can be built; else skipped, or with CITUS_REQUIRED=1
# (.ci/run) a failure
citus-tier:
	@if [ -n "$(CITUS_AVAILABLE)" ]; then $(MAKE) --no-print-directory citus-test; \
	elif [ -n "$(CITUS_REQUIRED)" ]; then \
	    echo "== tier 5 (Citus) is required (CITUS_REQUIRED) but neither $(CITUS_SO) nor $(CITUS_TARBALL) is here"; exit 1; \
	else echo "== tier 5 (Citus) skipped: neither $(CITUS_SO) nor $(CITUS_TARBALL) is here"; fi

citus-test: citus $(TEST_KEY)
	@echo "== tier 5: Citus, a coordinator and two workers (tests/citus.sh)"
	@PGBIN=$(CITUS_PGBIN) CITUS_DIR=$(CITUS_DIR) CITUS_PORT=$(CITUS_PORT) CITUS_KEY_FILE=$(TEST_KEY) tests/citus.sh

# bench/citus: the same tenant on a Citus worker and on a single node, and udm_move_tenant, on the
# Citus clusters of citus-test (ROWS=100000 by default)
citus-bench: citus
	@cargo build -q --release -p udm-bench --bin citus
	@PGBIN=$(CITUS_PGBIN) CITUS_DIR=$(CITUS_DIR) CITUS_PORT=$(CITUS_PORT) CITUS_BENCH=$(ROOT)/target/release/citus tests/citus.sh bench

## ------------------------------------------------------------------ make bench

bench: install
	@$(MAKE) --no-print-directory $(TEST_KEY)
	@$(CLUSTER) start $(BENCH_DIR) $(BENCH_PORT) keep "udm.bcrypt_cost = 4" "max_wal_size = 4GB" "checkpoint_timeout = 30min" \
	    "shared_preload_libraries = 'udm'" "udm.encryption_key_file = '$(TEST_KEY)'"
	@BENCH_HOST=$(BENCH_DIR)/sock BENCH_PORT=$(BENCH_PORT) PGBIN=$(PGBIN) bench/run.sh $(BENCH)

## ------------------------------------------------------------------ housekeeping

clean-clusters:
	@for d in $(RUN_DIR) $(TEST_DIR) $(BENCH_DIR); do $(CLUSTER) stop $$d; done
	@rm -rf $(RUN_DIR) $(TEST_DIR) $(BENCH_DIR)

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
