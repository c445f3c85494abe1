# sipreg: `make run` starts the registrar, `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests and benchmarks drive: sipp (sip-tester) and baresip as real SIP peers,
# etcd (etcd-server) as the real location store of the etcd store's integration tests;
# the benchmark also captures loopback traffic with tcpdump to time answers on the wire.
APT_PACKAGES := sip-tester baresip-core etcd-server
APT_COMMANDS := sipp baresip etcd
BENCH_APT_PACKAGES := $(APT_PACKAGES) tcpdump
BENCH_APT_COMMANDS := $(APT_COMMANDS) tcpdump

.PHONY: run test unit bench venv apt bench-apt apt-install clean

run: venv
	$(VENV)/bin/sipreg serve --manifests manifests

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Installs the SIP peers and etcd when one is missing (needs root, as on CI and a fresh Debian box).
apt:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)" COMMANDS="$(APT_COMMANDS)"

bench-apt:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BENCH_APT_PACKAGES)" COMMANDS="$(BENCH_APT_COMMANDS)"

apt-install:
	@missing=""; for c in $(COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACKAGES); \
	fi

test: venv apt
	$(PY) -m pytest -q -p no:cacheprovider

unit: venv
	$(PY) -m pytest -q tests/unit

bench: venv bench-apt
	$(PY) bench/run.py
	$(PY) bench/operator_scale.py

clean:
	rm -rf $(VENV) build *.egg-info
