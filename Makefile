# sipreg: `make run` starts the registrar, `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests and benchmarks drive: sipp (sip-tester) and baresip as real SIP peers.
APT_PACKAGES := sip-tester baresip-core
APT_COMMANDS := sipp baresip

.PHONY: run test unit bench venv apt lint clean

run: venv
	$(VENV)/bin/sipreg serve --manifests manifests

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Installs the SIP peers when one is missing (needs root, as on CI and a fresh Debian box).
apt:
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

test: venv apt
	$(PY) -m pytest -q -p no:cacheprovider

unit: venv
	$(PY) -m pytest -q tests/unit

bench: venv apt
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
