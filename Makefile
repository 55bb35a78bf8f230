# Fresh machine:  make demo   (set up, compile the tiny model to a plan, stream a video from it)   |   make test   (set up, then run the tests)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test fuzz clean lock

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

# Issue 19's long fuzz run (tools/fuzz_plans.py; hours on 2 cores: `nohup make fuzz > out/fuzz.log 2>&1 &`): the C
# runtime built with AddressSanitizer + UBSan, then the shared plan corpus, 10,000 mutated manifests and 10,000 cases
# of the other families through both readers. Counts: bench/results/fuzz-DATE.json; findings: out/fuzz-findings/.
FUZZ_BUILD := build/fuzz
FUZZ_CASES := corpus,manifest=10000,safetensors=1000,onnx=3500,files=4500,capi=1000
fuzz: install $(TINY_PLAN)/manifest.json
	cmake -S runtime -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DARVC_SANITIZE=ON -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	cmake --build $(FUZZ_BUILD) -j 2 --target plan_check capi_fuzz
	$(BIN)/python tools/fuzz_plans.py --plan $(TINY_PLAN) --build $(FUZZ_BUILD) --families $(FUZZ_CASES) \
	  --findings out/fuzz-findings --results bench/results/fuzz-$$(date +%F).json

clean:
	rm -rf $(VENV) out build
