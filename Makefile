# Fresh machine:  make demo   (set up, compile the tiny model to a plan, stream a video from it)   |   make test   (set up, then run the tests)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test clean lock

install: $(STAMP)

# pyproject.toml declares ranges; constraints.txt is the exact, tested set this venv gets
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# after changing pyproject.toml's ranges: resolve them afresh in a scratch venv and record the exact set
lock:
	rm -rf build/lock-venv && $(PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip
	build/lock-venv/bin/pip install -q torch==2.13.0 && build/lock-venv/bin/pip install -q '.[test]' torch==2.13.0
	{ sed -n '1,3p' constraints.txt; build/lock-venv/bin/pip freeze --exclude-editable | grep -v '^arvc' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

DEMO_PROMPT := a red circle moving right on a dark blue background

TINY_PLAN := out/tiny.plan

# compile once per change of the shipped model; the compile itself checks the plan against the reference
$(TINY_PLAN)/manifest.json: $(STAMP) models/tiny/model.safetensors models/tiny/vae.safetensors \
		models/tiny/text_encoder.safetensors models/tiny/model.json
	$(BIN)/arvc compile models/tiny -o $(TINY_PLAN) --force

demo: install $(TINY_PLAN)/manifest.json
	$(BIN)/arvc run $(TINY_PLAN) --prompt "$(DEMO_PROMPT)" --seconds 10 --seed 0 -o out/demo.mp4
	$(BIN)/arvc judge out/demo.mp4 --prompt "$(DEMO_PROMPT)"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out build
