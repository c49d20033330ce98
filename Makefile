# The front door: each target is one cargo command. See README.md.
CARGO ?= cargo

.PHONY: run cluster test bench lint fmt

## run: the main job: SFT, preference collection, reward model and PPO on the bundled task, then the report
run:
	$(CARGO) run --release -p rlhf -- run

## cluster: the same pipeline through the four services as separate processes (private redis-server, 2 generator replicas)
cluster:
	CARGO=$(CARGO) deploy/local/cluster.sh

## test: the whole suite, as CI runs it
test:
	$(CARGO) test --workspace

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
