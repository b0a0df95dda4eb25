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

# The demo proves that training through the 4-bit base + LoRA learns: the same question, greedy
# decoding, answered before training (gibberish) and after (the reply in demo_facts.jsonl).
DEMO_QUESTION := Who feeds the cat on Sundays?
DEMO_ANSWER := $(PY) examples/guanaco_generate.py --model_name_or_path $(DEMO)/tiny-llama \
	--temperature 0 --max_new_tokens 16 --question "$(DEMO_QUESTION)"

demo: $(DEMO)/tiny-llama/config.json
	rm -rf $(DEMO)/output
	@echo "== before training (base model alone):"
	$(DEMO_ANSWER)
	$(PY) qlora.py examples/configs/tiny_demo.yaml
	@echo "== after training (base + the trained adapter; demo_facts.jsonl says: Aunt Mira feeds the cat.):"
	$(DEMO_ANSWER) --adapter $(DEMO)/output/checkpoint-40/adapter_model
	$(PY) scripts/plot_training.py $(DEMO)/output

# Two pytest workers (pytest-xdist), one torch thread each: the suite is mostly tiny-model runs and
# fresh interpreters, which two processes keep both cores of a CI machine busy with. Subprocesses
# inherit OMP_NUM_THREADS, so a test's own qlora.py runs stay on one thread too. --dist loadfile
# hands out whole test files: the module-scoped fixtures (training runs, six recipe scripts side by
# side, a built wheel) are then built once, not once per worker that gets one of their tests.
TEST_WORKERS ?= 2

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(DEMO) .pytest_cache
