# The two commands (see README.md): `make serve` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm packages of the browser tests: puppeteer-core (drives Debian's firefox-esr) and
# whip-whep (a third-party WHIP/WHEP client). Nothing downloads a browser.
JS_DIR := tests/browser/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

.PHONY: serve test setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

serve: $(STAMP)
	$(BIN)/sfu serve

test: $(STAMP) $(JS_STAMP)
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) *.egg-info $(JS_DIR)/node_modules
