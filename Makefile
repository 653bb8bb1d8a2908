# dfdc-kit. Every target installs what it needs: on a fresh clone `make demo` and
# `make test` each work as the very first command. `make help` lists every target and variable.
#
# Point DATA at a DFDC download (the folder holding dfdc_train_part_*/ and/or
# train_sample_videos/, test_videos/) to work on the real data. `make train` records the run
# it trained in runs/LATEST (with its DATA): the later targets (calibrate, predict, score,
# kernel-build, kernel-local, kernel, submit) use that run and its DATA without repeating them.

SHELL := /bin/bash
## PYTHON: the interpreter `make setup` builds .venv with
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := data/demo
LATEST := runs/LATEST
# the data root and run of the last `make train` (runs/LATEST, written by `dfdc train`)
LATEST_DATA := $(shell sed -n 's/^data: //p' $(LATEST) 2>/dev/null)
LATEST_PROFILE := $(shell sed -n 's/^profile: //p' $(LATEST) 2>/dev/null)
## DATA: the data root (a DFDC download); default: the last trained run's (runs/LATEST), else the mini DFDC
DATA ?= $(or $(LATEST_DATA),$(DEMO_DATA))
ifneq ($(and $(LATEST_PROFILE),$(filter $(LATEST_DATA),$(DATA))),)
PROFILE ?= $(LATEST_PROFILE)
endif
ifeq ($(DATA),$(DEMO_DATA))
## PROFILE: named profile of faces/folds/train (the last run's on its DATA, else smoke on the mini DFDC, b7 on other data); a run's later stages use the run's own
PROFILE ?= smoke
## GROUP_BY: what folds keep together (original, part, identity; the demo: identity)
# the demo's folds keep each actor in one fold (face clusters of the embeddings; docs/folds.md: identity folds)
GROUP_BY ?= identity
else
PROFILE ?= b7
GROUP_BY ?=
endif
## RUN: run name: `make train` trains runs/RUN (default: PROFILE); later targets use runs/RUN (default: runs/LATEST)
RUN ?=
## FOLDS: folds to train (all, or a comma list such as 0,1)
FOLDS ?= all
## GPUS: GPUs to train on (more than 1: torchrun)
GPUS ?= 1
## WORKERS: face-extraction worker processes
WORKERS ?= 2
## SHARD: this machine's share of the face extraction (i/N)
SHARD ?= 0/1
## SET: configuration overrides, space-separated section.key=value
SET ?=
## NO_RESUME: 1 retrains the chosen folds from scratch instead of resuming
NO_RESUME ?=
## IMAGE: the interpreter of `make kernel-local`: linked (this environment's packages; default) or pinned (kernels/kaggle-image.txt's versions from PyPI, a cached venv of several GB)
IMAGE ?=
## USERNAME: the Kaggle user owning the kernel and the weights dataset (default: from the credentials)
USERNAME ?=
## SYSTEMS: systems `make compare` runs (all, or a comma list)
SYSTEMS ?= all
## GRID: a study's grid for `make compare` instead of SYSTEMS: 000-cnn, 000-rnn or 000-mlp (a row each)
GRID ?=
## COMPARE_PROFILE: the profile of `make compare`
COMPARE_PROFILE ?= compare
## FACES: the face crops folder (default DATA/faces)
FACES ?= $(DATA)/faces
FOLDS_CSV := folds/folds.csv
EMBEDDINGS := $(DATA)/embeddings
ANALYSIS := $(DATA)/analysis
# identity folds need the embeddings first; other groupings only the data
FOLDS_NEEDS := $(if $(filter identity,$(GROUP_BY)),embed,data)
GROUP_FLAG := $(if $(GROUP_BY),--group-by $(GROUP_BY))$(if $(filter identity,$(GROUP_BY)), --embeddings $(EMBEDDINGS))
# training names its run RUN, else PROFILE; the later stages name it only when RUN is given
TRAIN_NAME := $(or $(RUN),$(PROFILE))
RUN_FLAG = $(if $(RUN),$(1) runs/$(RUN))
# a run's later stages take the run's own configuration; a PROFILE given by the user is checked against it
RUN_PROFILE := $(if $(filter command line environment override,$(origin PROFILE)),--profile $(PROFILE))
## LABELS: held-out labels for `make score` / `make kernel-local` (default DATA/labels.csv, DFDC's name, else DATA/test_labels.csv)
LABELS ?= $(if $(wildcard $(DATA)/labels.csv),$(DATA)/labels.csv,$(DATA)/test_labels.csv)
SET_FLAGS := $(foreach s,$(SET),--set $(s))
USERNAME_FLAG := $(if $(USERNAME),--username $(USERNAME))
DFDC := $(PY) -m dfdc
# messages of `dfdc` name these make variables instead of its flags (dfdc.config.make_hint)
export DFDC_VIA_MAKE := 1

ifeq ($(GPUS),1)
TRAIN_LAUNCH := $(DFDC)
else
TRAIN_LAUNCH := $(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m dfdc
endif

.PHONY: help setup test demo synth data meta faces faces-merge embed analyze folds train predict score \
        calibrate kernel kernel-build kernel-local submit compare bench bench-faces bench-train bench-predict \
        bench-label-cleaning bench-embed bench-analyze bench-gpu clean

help: ## this list: every target and variable, from the Makefile's own `##` comments
	@echo "targets:"
	@sed -n 's/^\([a-z][a-z-]*\):.*## \(.*\)/\1|\2/p' $(firstword $(MAKEFILE_LIST)) | awk -F'|' '{printf "  %-21s %s\n", $$1, $$2}'
	@echo "variables (make TARGET VAR=value):"
	@sed -n 's/^## \([A-Z_]*\): \(.*\)/\1|\2/p' $(firstword $(MAKEFILE_LIST)) | awk -F'|' '{printf "  %-21s %s\n", $$1, $$2}'

setup: $(STAMP) ## make the virtual environment .venv (every target does it first)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# the suite checks dfdc's own messages (flags), and sets DFDC_VIA_MAKE itself where it tests make's
test: $(STAMP) ## the test suite
	DFDC_VIA_MAKE=0 $(PY) -m pytest -q tests

# The built-in mini DFDC is generated on first use.
$(DEMO_DATA)/.synth.json: | $(STAMP)
	$(DFDC) synth --out $(DEMO_DATA) --profile $(PROFILE) $(SET_FLAGS)

synth: $(DEMO_DATA)/.synth.json ## generate the built-in mini DFDC (data/demo)

ifeq ($(DATA),$(DEMO_DATA))
data: $(DEMO_DATA)/.synth.json ## the data DATA points at (the mini DFDC is generated on first use)
else
data: $(STAMP)
endif

meta: data ## DATA's metadata.json files -> one table, with counts
	$(DFDC) meta --data $(DATA)

faces: data ## class-balanced face crops -> FACES (resumes; WORKERS, SHARD)
	$(DFDC) faces --data $(DATA) --out $(FACES) --profile $(PROFILE) --workers $(WORKERS) --shard $(SHARD) $(SET_FLAGS)

faces-merge: data ## merge the shards' face indexes (after `make faces SHARD=i/N` on each machine)
	$(DFDC) faces --data $(DATA) --out $(FACES) --profile $(PROFILE) --merge $(SET_FLAGS)

embed: faces ## pooled backbone features of the crops -> DATA/embeddings
	$(DFDC) embed --faces $(FACES) --out $(EMBEDDINGS) --profile $(PROFILE) $(SET_FLAGS)

analyze: embed ## PCA -> t-SNE -> HDBSCAN maps and clusters of the embeddings -> DATA/analysis
	$(DFDC) analyze --embeddings $(EMBEDDINGS) --out $(ANALYSIS) --profile $(PROFILE) $(SET_FLAGS)

# `make folds` always (re)builds the split; `make train` and `make compare` build it only when
# folds/folds.csv is missing, so a run never trains on a split that changed under it (a run also
# records the fingerprints of its folds table and faces index and refuses to resume on others).
folds: $(FOLDS_NEEDS) ## (re)build the cross-validation split -> folds/folds.csv (GROUP_BY)
	$(DFDC) folds --data $(DATA) --out $(FOLDS_CSV) $(GROUP_FLAG) --profile $(PROFILE) $(SET_FLAGS)

$(FOLDS_CSV):
	$(MAKE) --no-print-directory folds

train: faces $(FOLDS_CSV) ## one model per fold -> runs/RUN (default runs/PROFILE), recorded in runs/LATEST (GPUS, FOLDS, NO_RESUME)
	$(TRAIN_LAUNCH) train --faces $(FACES) --folds $(FOLDS_CSV) --profile $(PROFILE) \
	    --name $(TRAIN_NAME) --fold-list $(FOLDS) --data $(DATA) $(if $(NO_RESUME),--no-resume) $(SET_FLAGS)

calibrate: data ## aggregation, temperature and clip on the run's held-out videos -> RUN/calibration.json
	$(DFDC) calibrate $(call RUN_FLAG,--run) --data $(DATA) --folds $(FOLDS_CSV) $(RUN_PROFILE) $(SET_FLAGS)

predict: data ## the run's models on DATA/test_videos -> submissions/NAME/submission.csv
	$(DFDC) predict --videos $(DATA)/test_videos $(call RUN_FLAG,--models) \
	    $(if $(RUN),--out submissions/$(RUN)/submission.csv) $(RUN_PROFILE) $(SET_FLAGS)

score: $(STAMP) ## log loss of the run's submission against LABELS -> report.md beside it
	$(DFDC) score $(if $(RUN),--submission submissions/$(RUN)/submission.csv) --labels $(LABELS)

demo: $(STAMP) ## the whole pipeline on the built-in mini DFDC (run runs/demo)
	$(MAKE) --no-print-directory synth faces embed folds train calibrate predict score DATA=$(DEMO_DATA) PROFILE=smoke RUN=demo

kernel: $(STAMP) ## the run's Kaggle bundle: weights dataset + offline kernel, pushed (USERNAME)
	$(DFDC) kernel $(call RUN_FLAG,--models) --push $(USERNAME_FLAG) $(RUN_PROFILE) $(SET_FLAGS)

kernel-build: $(STAMP) ## the run's Kaggle bundle, built only -> kernels/build
	$(DFDC) kernel $(call RUN_FLAG,--models) $(USERNAME_FLAG) $(RUN_PROFILE) $(SET_FLAGS)

kernel-local: data ## the bundle's kernel run here, offline, on DATA, in a Kaggle-image-like interpreter (IMAGE); scored when LABELS exist
	$(DFDC) kernel $(call RUN_FLAG,--models) --local $(DATA) $(if $(wildcard $(LABELS)),--labels $(LABELS)) \
	    $(USERNAME_FLAG) $(if $(IMAGE),--set kernel.local_image=$(IMAGE)) $(RUN_PROFILE) $(SET_FLAGS)

submit: $(STAMP) ## submit the pushed kernel version to the competition
	$(DFDC) submit $(RUN_PROFILE) $(SET_FLAGS)

# Every listed system trained and scored on the same folds -> submissions/compare/compare.csv + .png
# (smoke sizes with the compare profile; SYSTEMS=a,b,c picks systems; GRID=000-rnn runs a study's grid
# instead, 000-cnn / 000-rnn / 000-mlp; finished ones are not retrained; an existing folds/folds.csv
# is used as it is: `make folds` first for a new split).
compare: faces $(FOLDS_CSV) ## every system of the reference studies on the same folds -> submissions/compare (SYSTEMS, GRID)
	$(DFDC) compare --data $(DATA) --faces $(FACES) --folds $(FOLDS_CSV) --profile $(COMPARE_PROFILE) \
	    $(if $(GRID),--grid $(GRID),--systems $(SYSTEMS)) $(SET_FLAGS)

bench: bench-faces bench-train bench-predict bench-embed bench-analyze ## every benchmark below

bench-faces: $(STAMP) ## decode + detect + crop throughput
	$(PY) bench/bench_faces.py

bench-train: $(STAMP) ## training step and loader throughput
	$(PY) bench/bench_train.py

bench-predict: $(STAMP) ## prediction throughput per video
	$(PY) bench/bench_predict.py

bench-label-cleaning: $(STAMP) ## the same-face tolerance of the label cleaning
	$(PY) bench/bench_label_cleaning.py

bench-embed: $(STAMP) ## embedding throughput
	$(PY) bench/bench_embed.py

# 130,000 x 512 synthetic embeddings (the study's size); BENCH_ARGS="--n 20000 --compare" for a quick run
## BENCH_ARGS: arguments of bench/bench_analyze.py (e.g. "--n 20000 --compare")
bench-analyze: $(STAMP) ## PCA -> t-SNE -> HDBSCAN on synthetic embeddings (BENCH_ARGS)
	$(PY) bench/bench_analyze.py $(BENCH_ARGS)

## BENCH_LOG: the folder `make bench-gpu` logs under
BENCH_LOG ?= bench/out/gpu
## QUICK: 1 runs `make bench-gpu` tiny, on a CPU (what its test does)
QUICK ?=
bench-gpu: $(STAMP) ## every GPU-only figure in one call (<= 8 min on an H100), logs under BENCH_LOG
	PY=$(PY) bench/gpu.sh $(BENCH_LOG) $(if $(QUICK),--quick)

clean: ## remove runs, bundles, submissions, folds and bench output
	rm -rf runs kernels/build submissions/*/ folds/*.csv bench/out .pytest_cache
