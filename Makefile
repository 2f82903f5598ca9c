# The two commands of the README, and the steps they are made of.
#   make demo   install into .venv, build the sample crawl, run the extract job on it
#   make test   install everything (Python packages, Flink/Spark and job-server jars) and run all tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clusters

demo: $(STAMP)
	$(BIN)/crawl2clip demo --output output/demo

test: $(STAMP) clusters
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
