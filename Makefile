# dfdc-kit. Every target installs what it needs: on a fresh clone `make demo` and
# `make test` each work as the very first command.
#
#   make demo                       the whole pipeline on the built-in mini DFDC
#   make folds train                folds + cross-validated models (DATA, PROFILE, FOLDS, GPUS)
#   make kernel                     Kaggle bundle: weights dataset + offline kernel, pushed
#   make submit                     submit the pushed kernel version to the competition
#   make score                      local log loss of a submission
#   make compare                    every system of the reference studies on the same folds
#   make embed analyze              face embeddings; PCA -> t-SNE -> HDBSCAN maps and clusters
#
# Point DATA at a DFDC download (the folder holding dfdc_train_part_*/ and/or
# train_sample_videos/, test_videos/) to work on the real data.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := data/demo
DATA ?= $(DEMO_DATA)
ifeq ($(DATA),$(DEMO_DATA))
PROFILE ?= smoke
# the demo's folds keep each actor in one fold (face clusters of the embeddings; docs/folds.md: identity folds)
GROUP_BY ?= identity
else
PROFILE ?= b7
GROUP_BY ?=
endif
RUN ?= $(PROFILE)
FOLDS ?= all
GPUS ?= 1
WORKERS ?= 2
SHARD ?= 0/1
SET ?=
SYSTEMS ?= all
COMPARE_PROFILE ?= compare
FACES := $(DATA)/faces
FOLDS_CSV := folds/folds.csv
EMBEDDINGS := $(DATA)/embeddings
ANALYSIS := $(DATA)/analysis
# identity folds need the embeddings first; other groupings only the data
FOLDS_NEEDS := $(if $(filter identity,$(GROUP_BY)),embed,data)
GROUP_FLAG := $(if $(GROUP_BY),--group-by $(GROUP_BY))$(if $(filter identity,$(GROUP_BY)), --embeddings $(EMBEDDINGS))
RUN_DIR := runs/$(RUN)
SUBMISSION := submissions/$(RUN)/submission.csv
LABELS ?= $(DATA)/test_labels.csv
SET_FLAGS := $(foreach s,$(SET),--set $(s))
DFDC := $(PY) -m dfdc

ifeq ($(GPUS),1)
TRAIN_LAUNCH := $(DFDC)
else
TRAIN_LAUNCH := $(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m dfdc
endif

.PHONY: help setup test demo synth data meta faces faces-merge embed analyze folds train predict score \
        calibrate kernel kernel-build kernel-local submit compare bench bench-faces bench-train bench-predict \
        bench-label-cleaning bench-embed bench-analyze clean

help:
	@sed -n '1,15p' Makefile

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

# The built-in mini DFDC is generated on first use.
$(DEMO_DATA)/.synth.json: | $(STAMP)
	$(DFDC) synth --out $(DEMO_DATA) --profile $(PROFILE) $(SET_FLAGS)

synth: $(DEMO_DATA)/.synth.json

ifeq ($(DATA),$(DEMO_DATA))
data: $(DEMO_DATA)/.synth.json
else
data: $(STAMP)
endif

meta: data
	$(DFDC) meta --data $(DATA)

faces: data
	$(DFDC) faces --data $(DATA) --out $(FACES) --profile $(PROFILE) --workers $(WORKERS) --shard $(SHARD) $(SET_FLAGS)

faces-merge: data
	$(DFDC) faces --data $(DATA) --out $(FACES) --profile $(PROFILE) --merge $(SET_FLAGS)

embed: faces
	$(DFDC) embed --faces $(FACES) --out $(EMBEDDINGS) --profile $(PROFILE) $(SET_FLAGS)

analyze: embed
	$(DFDC) analyze --embeddings $(EMBEDDINGS) --out $(ANALYSIS) --profile $(PROFILE) $(SET_FLAGS)

# `make folds` always (re)builds the split; `make train` and `make compare` build it only when
# folds/folds.csv is missing, so a run never trains on a split that changed under it (a run also
# records the fingerprints of its folds table and faces index and refuses to resume on others).
folds: $(FOLDS_NEEDS)
	$(DFDC) folds --data $(DATA) --out $(FOLDS_CSV) $(GROUP_FLAG) --profile $(PROFILE) $(SET_FLAGS)

$(FOLDS_CSV):
	$(MAKE) --no-print-directory folds

train: faces $(FOLDS_CSV)
	$(TRAIN_LAUNCH) train --faces $(FACES) --folds $(FOLDS_CSV) --profile $(PROFILE) \
	    --name $(RUN) --fold-list $(FOLDS) $(SET_FLAGS)

calibrate: data
	$(DFDC) calibrate --run $(RUN_DIR) --data $(DATA) --folds $(FOLDS_CSV) --profile $(PROFILE) $(SET_FLAGS)

predict: data
	$(DFDC) predict --videos $(DATA)/test_videos --models $(RUN_DIR) --out $(SUBMISSION) --profile $(PROFILE) $(SET_FLAGS)

score: $(STAMP)
	$(DFDC) score --submission $(SUBMISSION) --labels $(LABELS)

demo: $(STAMP)
	$(MAKE) --no-print-directory synth faces embed folds train calibrate predict score DATA=$(DEMO_DATA) PROFILE=smoke RUN=demo

kernel: $(STAMP)
	$(DFDC) kernel --models $(RUN_DIR) --push --profile $(PROFILE) $(SET_FLAGS)

kernel-build: $(STAMP)
	$(DFDC) kernel --models $(RUN_DIR) --profile $(PROFILE) $(SET_FLAGS)

kernel-local: data
	$(DFDC) kernel --models $(RUN_DIR) --local $(DATA) --profile $(PROFILE) $(SET_FLAGS)

submit: $(STAMP)
	$(DFDC) submit --profile $(PROFILE) $(SET_FLAGS)

# Every listed system trained and scored on the same folds -> submissions/compare/compare.csv + .png
# (smoke sizes with the compare profile; SYSTEMS=a,b,c picks systems; finished ones are not retrained;
# an existing folds/folds.csv is used as it is: `make folds` first for a new split).
compare: faces $(FOLDS_CSV)
	$(DFDC) compare --data $(DATA) --faces $(FACES) --folds $(FOLDS_CSV) --profile $(COMPARE_PROFILE) \
	    --systems $(SYSTEMS) $(SET_FLAGS)

bench: bench-faces bench-train bench-predict bench-embed bench-analyze

bench-faces: $(STAMP)
	$(PY) bench/bench_faces.py

bench-train: $(STAMP)
	$(PY) bench/bench_train.py

bench-predict: $(STAMP)
	$(PY) bench/bench_predict.py

bench-label-cleaning: $(STAMP)
	$(PY) bench/bench_label_cleaning.py

bench-embed: $(STAMP)
	$(PY) bench/bench_embed.py

# 130,000 x 512 synthetic embeddings (the study's size); BENCH_ARGS="--n 20000 --compare" for a quick run
bench-analyze: $(STAMP)
	$(PY) bench/bench_analyze.py $(BENCH_ARGS)

clean:
	rm -rf runs kernels/build submissions/*/ folds/*.csv bench/out .pytest_cache
