# The two commands (see README.md): `make serve` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm packages of the browser tests: puppeteer-core (drives Debian's firefox-esr) and
# whip-whep (a third-party WHIP/WHEP client). Nothing downloads a browser.
JS_DIR := tests/browser/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

# The compiled fan-out step of the packet path (sfu/rtc/_fanout.c, see sfu/rtc/batch.py):
# built after the install; `serve` goes on without it (the pure-Python path, logged),
# `test` needs it, and runs the packet-path tests a second time on the Python path.
FANOUT := $(VENV)/.fanout
PACKET_PATH_TESTS := tests/unit/test_fanout_batch.py tests/unit/test_downtrack.py \
	tests/unit/test_downtrack_simulcast.py tests/unit/test_rtp.py tests/unit/test_forwarder.py \
	tests/unit/test_vp8_munger.py tests/unit/test_rebind.py tests/unit/test_participant_simulcast.py \
	tests/integration/test_forwarding.py tests/integration/test_loss.py \
	tests/unit/test_twcc.py tests/integration/test_metrics_media.py tests/integration/test_udp_port.py

.PHONY: serve test setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(FANOUT): $(STAMP) sfu/rtc/_fanout.c sfu/rtc/build_fanout.py
	$(BIN)/python -m sfu.rtc.build_fanout --force || \
		echo "sfu.rtc._fanout not built (needs gcc and python3.11-dev): the SFU runs the pure-Python packet path"
	touch $(FANOUT)

setup: $(STAMP) $(FANOUT)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

serve: $(STAMP) $(FANOUT)
	$(BIN)/sfu serve

test: $(STAMP) $(JS_STAMP) $(FANOUT)
	$(BIN)/python -m sfu.rtc.build_fanout
	$(BIN)/python -m pytest -q -rs
	SFU_BATCH=0 $(BIN)/python -m pytest -q -rs $(PACKET_PATH_TESTS)

clean:
	rm -rf $(VENV) *.egg-info $(JS_DIR)/node_modules build/fanout sfu/rtc/_fanout*.so
