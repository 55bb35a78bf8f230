# Fresh machine:  make demo   (set up, then stream a video)   |   make test   (set up, then run the tests)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]' torch==2.13.0
	touch $(STAMP)

demo: install
	$(BIN)/python tools/make_demo_checkpoint.py --out out/demo
	$(BIN)/arvc run out/demo --prompt-embeds out/demo/prompt.safetensors \
		--seconds 4 --seed 0 --height 128 --width 128 -o out/demo.mp4

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out build
