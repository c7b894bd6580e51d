# agentd: `make start` installs and starts the daemon; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install start run stop test test-fast lint bench install-systemd clean

# Editable, so the checkout is what runs. setuptools' notice about editable installs
# is not for a newcomer: PYTHONWARNINGS silences that one warning; errors still show.
$(BIN)/agentd: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "agentd needs Python 3.11+"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }
	@echo "setting up $(VENV): agentd, agentctl and the dev tools (first run only)"
	@$(BIN)/pip install --quiet --upgrade pip
	@PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/agentd ## virtualenv in ./.venv with agentd, agentctl and the dev tools

start: install ## install, then start the daemon detached with development defaults
	$(BIN)/agentctl start

run: install ## run the daemon in the foreground (Ctrl-C stops it)
	$(BIN)/agentd

stop:
	$(BIN)/agentctl stop

test: install ## the whole test suite (real daemon, real SQLCipher, real sockets)
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check agentd agentctl tests bench
	$(BIN)/mypy agentd agentctl

bench: install ## performance figures, each as a ratio to a floor measured in the same run
	$(BIN)/python -m bench

install-systemd: install ## the systemd units, sysusers/tmpfiles entries and /etc/agentd (root)
	./systemd/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
