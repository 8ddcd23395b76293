# tl2edge: `make demo` and `make test` are all the set-up there is on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TL2EDGE := $(BIN)/tl2edge
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint format protos bench source-backbone image clean help docs-figures

help:
	@echo "make demo             the whole pipeline on built-in synthetic data (CPU, a few minutes)"
	@echo "make test             lint + the test suite (CPU, about 20 minutes)"
	@echo "make protos           regenerate the gRPC stubs from protos/"
	@echo "make bench            run the benchmarks, results in docs/benchmarks.md and benchmarks/results/"
	@echo "make source-backbone  pretrain VGG16 on the synthetic source task -> tl2edge/assets/ (long on CPU)"
	@echo "make image            build the serving container image with buildah"
	@echo "make docs-figures     re-render docs/img/*.png from their .dot sources"

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[train,export,serve,dev]"
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(TL2EDGE) demo --out demo-out

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-renders docs/img/*.png from their Graphviz sources (apt-get install graphviz).
docs-figures:
	scripts/render_docs.sh

# Regenerates tl2edge/_proto from protos/ (grpcio-tools from the dev extra); a test fails when
# the committed stubs are stale.
protos: $(STAMP)
	$(BIN)/python scripts/protogen.py

# Heavy measurements (about 15 minutes on 2 cores); results in benchmarks/results/ and,
# by hand, docs/benchmarks.md. The export benchmark writes the VGG16 int8 bundle that the
# serving benchmark loads. The demo's run dir supplies the accuracy/agreement targets.
bench: $(STAMP)
	test -f demo-out/runs/transfer/model.keras || $(TL2EDGE) demo --out demo-out --skip-serve
	$(BIN)/python benchmarks/train_throughput.py --image-size 32 --batch-size 32 --out benchmarks/results/train_throughput_32.json
	$(BIN)/python benchmarks/train_throughput.py --image-size 224 --batch-size 16 --steps 4 --out benchmarks/results/train_throughput_224.json
	$(BIN)/python benchmarks/export_variants.py --target-run demo-out/runs/transfer
	$(BIN)/python benchmarks/serve_bench.py --vgg build/bench-export/repo/vgg16-int8/1 --out benchmarks/results/serve.json

# Pretrains VGG16 in two stages and keeps its backbone as $(SOURCE_OUT)/vgg16_synth_source.npz
# (float16, compressed) with the training report of the second stage:
# 1. from scratch on the `source` task (10 shape/texture classes);
# 2. continued on the `procedural` task (53 classes: the source's, IFS fractals, filtered noise,
#    Gabor fields, dead leaves; no glyphs), head first, then every block for 3 epochs.
# From scratch, VGG16 (no batch norm) was still at chance on the 53 classes after an epoch
# of 20 minutes here; starting from stage 1 it learns at once. SOURCE_OUT=build/candidate
# writes a candidate beside the shipped one. The shipped file's stage 2 started from the
# stage-1 backbone shipped before (this recipe's stage 1, with its report in git history);
# stage 2 takes about 40 minutes on 2 cores.
SOURCE_OUT ?= tl2edge/assets
source-backbone: $(STAMP)
	$(TL2EDGE) data synth build/source-stage1 --task source --per-class 600 --size 32 --seed 0 --overwrite
	$(TL2EDGE) train build/source-stage1 --out build/source-stage1-run --weights none --image-size 32 \
	    --val-split 0.1 --epochs-head 40 --epochs-finetune 0 --patience 6 --overwrite
	$(TL2EDGE) backbone build/source-stage1-run build/source-stage1.npz --overwrite
	$(TL2EDGE) data synth build/source --task procedural --per-class 240 --size 32 --seed 0 --overwrite
	$(TL2EDGE) train build/source --out build/source-run --weights build/source-stage1.npz \
	    --image-size 32 --val-split 0.1 --epochs-head 1 --epochs-finetune 3 --overwrite
	mkdir -p $(SOURCE_OUT)
	$(TL2EDGE) backbone build/source-run $(SOURCE_OUT)/vgg16_synth_source.npz --overwrite
	{ echo "<!-- written by make source-backbone: the training report of tl2edge/assets/vgg16_synth_source.npz (stage 2) -->"; \
	  sed -e 's/(curves.png)/(vgg16_synth_source_curves.png)/' -e 's/(confusion.png)/(vgg16_synth_source_confusion.png)/' \
	    build/source-run/report.md; } > $(SOURCE_OUT)/vgg16_synth_source.md
	cp build/source-run/curves.png $(SOURCE_OUT)/vgg16_synth_source_curves.png
	cp build/source-run/confusion.png $(SOURCE_OUT)/vgg16_synth_source_confusion.png

# Serving image with buildah, as root, no Docker engine or registry needed; the Debian base
# is debootstrapped once and cached. `make image VARIANT=gpu BASE_IMAGE=nvidia/cuda:...`
# for the CUDA variant, MODEL_REPO=bundle/<repo> to bake a model repository in.
image:
	scripts/build-image.sh

clean:
	rm -rf build demo-out .pytest_cache .ruff_cache
