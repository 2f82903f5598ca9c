# The two commands of the README, and the steps they are made of.
#   make demo   install into .venv, build the sample crawl, run the extract job on it
#   make test   install everything (Python packages, Flink/Spark and job-server jars) and run all tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clusters browser

demo: $(STAMP)
	$(BIN)/crawl2clip demo --output output/demo

test: $(STAMP) clusters browser
	$(BIN)/python -m pytest

install: $(STAMP)

# Reinstalled only when the package definition or the pinned versions change.
$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# Flink and Spark distributions and the Beam job-server jars, cached under .cache/clusters.
clusters: $(STAMP)
	deploy/cluster.sh install

# Debian's Chromium and its driver, for the tests of the web pages (explorer, run report).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }
