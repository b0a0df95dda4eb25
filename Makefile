# Quickstart targets: `make demo` (train the tiny model on CPU, offline) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# torch==2.13.0 in requirements.txt is the CPU build; on a CUDA machine install torch first.
# The project itself goes in editable, so `qlora`, `qlora-elo`, ... and `import qlorakit` use this checkout.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(DEMO)/tiny-llama/config.json: $(VENV)/.installed scripts/make_tiny_model.py
	$(PY) scripts/make_tiny_model.py $(DEMO)/tiny-llama

demo: $(DEMO)/tiny-llama/config.json
	rm -rf $(DEMO)/output
	$(PY) qlora.py examples/configs/tiny_demo.yaml
	$(PY) examples/guanaco_generate.py --model_name_or_path $(DEMO)/tiny-llama \
		--adapter $(DEMO)/output/checkpoint-30/adapter_model --max_new_tokens 40 \
		--question "How can I make my houseplants last longer?"
	$(PY) scripts/plot_training.py $(DEMO)/output

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
