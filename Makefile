# make demo : fresh machine -> venv, CPU torch (or the machine's own torch), package, demo run
# make test : fresh machine -> venv, package, CPU test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pgolf-installed

.PHONY: install demo test test-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
		echo "reusing the machine's torch"; python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV); \
		$(PY) -m pip install -q --upgrade pip; \
		$(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[test,demo]'
	@touch $(STAMP)

demo: install
	$(PY) -m pgolf demo

test: install
	$(PY) -m pytest -q

test-gpu: install
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
