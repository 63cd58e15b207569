# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch is pinned to the CPU build that lies on this machine's disk; CUDA boxes get theirs from the index.
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/stepdpo demo --workdir runs/demo

# The HTML report test opens the report in headless Chromium: install it where apt-get can
# (root on Debian/Ubuntu CI); elsewhere that one test skips with its reason.
$(VENV)/.chromium: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "could not install chromium; the HTML report browser test will skip"
	@if command -v chromium >/dev/null 2>&1; then touch $@; fi

test: $(STAMP) $(VENV)/.chromium
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
