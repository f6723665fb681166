# gsv-serve: two commands on a fresh machine.
#   make serve   install (once) and start the server on an embedded local Ray at 127.0.0.1:8000
#   make test    install (once) and run the test suite + the parity checker
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= $(abspath ../shared)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test test-fast parity bench loadtest clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

serve: install
	$(BIN)/gsv-serve serve --host $(HOST) --port $(PORT) $(ARGS)

test: install
	NLTK_DATA=$(SHARED)/vendor/nltk_data $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) parity

test-fast: install
	NLTK_DATA=$(SHARED)/vendor/nltk_data $(BIN)/python -m pytest -q -m "not ray" $(PYTEST_ARGS)

parity: install
	NLTK_DATA=$(SHARED)/vendor/nltk_data $(BIN)/python $(SHARED)/reference/parity/check_parity.py \
	    --adapter tests/parity/adapter.py \
	    --golden $(SHARED)/reference/gpt_sovits_v2/golden/tiny_seed1234_A \
	    --ckpt $(SHARED)/reference/gpt_sovits_v2/checkpoints/tiny_seed1234 --require all

# every benchmark; each prints ratios measured in its own run (figures: docs/PERFORMANCE.md)
bench: install
	$(BIN)/python bench/bench_models.py --threads 1
	$(BIN)/python bench/bench_gpt.py --threads 2
	$(BIN)/python bench/bench_gpt.py --threads 2 --dtype bfloat16
	$(BIN)/python bench/bench_gpt.py --threads 2 --compile
	$(BIN)/python bench/bench_sovits.py
	$(BIN)/python bench/bench_frontend.py
	$(BIN)/python bench/bench_guard.py
	NLTK_DATA=$(SHARED)/vendor/nltk_data $(BIN)/python bench/bench_serve.py
	NLTK_DATA=$(SHARED)/vendor/nltk_data $(BIN)/python bench/bench_streaming.py

loadtest: install
	$(BIN)/python loadtest/run.py --duration 60

clean:
	rm -rf $(VENV) build *.egg-info
