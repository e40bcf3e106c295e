# prunekit: every target creates the virtual environment it needs.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PK     := $(BIN)/prunekit

# The embedded dataset and baseline, shared by everything that follows.
DATA           ?= data/synth
BASE           ?= runs/baseline
BASE_STEPS     ?= 1800
BASE_THREADS   ?= 2

.PHONY: install test test-fast lint bench baseline detr-baseline all-scenarios grid-report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The full suite, slow end-to-end tests included (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the slow end-to-end tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Style (ruff) and the layering (import-linter's contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check prunekit tests benchmarks examples
	$(BIN)/lint-imports

bench: $(STAMP)
	@failed=; for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || failed="$$failed $$b"; \
	done; if [ -n "$$failed" ]; then echo "missed targets:$$failed"; exit 1; fi

# ---------------------------------------------------------------- the embedded baseline

$(DATA)/train.json: | $(STAMP)
	rm -rf $(DATA)
	@mkdir -p $(OUT)
	$(call timed,data,$(PK) data synth $(DATA) --train 3000 --val 500 --size 160 --seed 0 > /dev/null)

# Train the small model from scratch (about 15 minutes on two CPU cores), then measure it at
# the mAP threshold (0.001) and at the paper's (0.5).
$(BASE)/model.st: $(DATA)/train.json
	mkdir -p $(BASE) $(OUT)
	$(call timed,baseline,$(PK) init yolov3-small --dataset $(DATA)/train.json --seed 0 \
	  | $(PK) finetune --data $(DATA)/train.json --val $(DATA)/val.json --steps $(BASE_STEPS) \
	      --batch-size 32 --lr 2e-3 --eval-every 300 --threads $(BASE_THREADS) --device cpu \
	      -o $@)

$(BASE)/metrics.json: $(BASE)/model.st
	$(PK) detect $< --data $(DATA)/val.json --conf 0.001 --device cpu -o $(BASE)/dets-0.001.csv
	$(PK) evaluate $(BASE)/dets-0.001.csv --gt $(DATA)/val.json -o $(BASE)/metrics-0.001.json
	$(PK) detect $< --data $(DATA)/val.json --conf 0.5 --device cpu -o $(BASE)/dets-0.5.csv
	$(PK) evaluate $(BASE)/dets-0.5.csv --gt $(DATA)/val.json -o $(BASE)/metrics-0.5.json
	cp $(BASE)/metrics-0.001.json $@

baseline: $(BASE)/metrics.json

# ------------------------------------------------------ the embedded Deformable DETR baseline
#
#   make detr-baseline
#
# Synthetic road scenes in KITTI's own format (2,500 at 384 × 128), converted by `data kitti`
# (a seeded 80/20 split); deformable-detr-small trained from scratch (about 15 minutes on two
# cores, validation mAP every 200 steps in the history); then FGSM-with-random-start adversarial
# fine-tuning. Each model is measured clean and under PGD (ε 0.05, step 0.02, 5 steps):
# DETR_BASE/{model,robust}-{clean,pgd}.json.
KITTI_SYNTH    ?= data/kitti-synth
DETR_BASE      ?= runs/detr-baseline
DETR_STEPS     ?= 1100
DETR_ADV_STEPS ?= 300
DETR_TRAIN     := $(KITTI_SYNTH)/coco/train.json
DETR_VAL       := $(KITTI_SYNTH)/coco/val.json
DETR_IMAGES    := --images $(KITTI_SYNTH)/training

$(DETR_TRAIN): | $(STAMP)
	rm -rf $(KITTI_SYNTH)
	$(PK) data synth $(KITTI_SYNTH)/training --layout kitti --images 2500 --width 384 \
	  --height 128 --seed 0 > /dev/null
	$(PK) data kitti $(KITTI_SYNTH)/training $(KITTI_SYNTH)/coco --val-fraction 0.2 --seed 0 \
	  > /dev/null

$(DETR_BASE)/model.st: $(DETR_TRAIN)
	mkdir -p $(DETR_BASE)
	$(PK) init deformable-detr-small --dataset $(DETR_TRAIN) --seed 0 \
	  | $(PK) finetune --data $(DETR_TRAIN) $(DETR_IMAGES) --val $(DETR_VAL) \
	      --steps $(DETR_STEPS) --batch-size 16 --lr 5e-4 --weight-decay 1e-4 --eval-every 200 \
	      --threads 2 \
	      --device cpu -o $@

$(DETR_BASE)/robust.st: $(DETR_BASE)/model.st
	$(PK) finetune $< --data $(DETR_TRAIN) $(DETR_IMAGES) --adv fgsm --adv-mix 0.5 \
	  --steps $(DETR_ADV_STEPS) --batch-size 16 --lr 2e-4 --threads 2 --device cpu -o $@

$(DETR_BASE)/%-clean.json: $(DETR_BASE)/%.st
	$(PK) detect $< --data $(DETR_VAL) $(DETR_IMAGES) --conf 0.001 --threads 2 --device cpu \
	  | $(PK) evaluate --gt $(DETR_VAL) -o $@

$(DETR_BASE)/%-pgd.json: $(DETR_BASE)/%.st
	$(PK) detect $< --data $(DETR_VAL) $(DETR_IMAGES) --conf 0.001 --attack pgd --eps 0.05 \
	  --alpha 0.02 --steps 5 --threads 2 --device cpu | $(PK) evaluate --gt $(DETR_VAL) -o $@

.PRECIOUS: $(DETR_BASE)/model.st $(DETR_BASE)/robust.st
detr-baseline: $(foreach m,model robust,$(foreach k,clean pgd,$(DETR_BASE)/$(m)-$(k).json))

# ------------------------------------------------------------------ the experiment grid
#
#   make all-scenarios [SCALE=smoke|default|paper] [RUNS=n] [OUT=dir] [JOBS=n]
#
# Five scenarios (SPEC section 6) × ratios × runs. Per run: adversarially fine-tune the
# baseline (one robust colour model shared by the four colour scenarios, one grey model), score
# it (DeepLIFT once per model; HYDRA per granularity and ratio, as HYDRA optimises scores for a
# target ratio); per cell: mask (structured: compacted), adversarial fine-tune, detect clean and
# PGD-attacked validation images, evaluate, bench (`prunekit grid cell`). Every model, score
# file and cell is a target under OUT, written atomically: `make -j` parallelises, an
# interrupted grid resumes where it stopped, and nothing finished is recomputed.
#
# Budget (default): adversarial fine-tuning uses FGSM with a random start (one extra pass per
# step; the grey model gets more steps, since it must also adapt to grey input) and evaluation
# uses PGD with the paper's settings (ε 0.05, step 0.02, 5 steps) on a
# fixed 160-image validation subset; cells run JOBS at a time with one thread each.
SCALE  ?= default
OUT    ?= runs/grid
JOBS   ?= 2
# JOBS processes with cores/JOBS threads each: more threads than cores make OpenMP threads spin
# against each other (a two-thread job beside a one-thread job ran three times slower).
GRID_THREADS ?= $(shell n=$$(( $$(nproc) / $(JOBS) )); echo $$(( n > 0 ? n : 1 )))
RATIOS ?= 0 0.25 0.5 0.65 0.75 0.85 0.9 0.95 0.99

ifeq ($(SCALE),smoke)
  # Minutes, for tests: a tiny dataset and model inside OUT, two runs, three ratios.
  GRID_DATA   := $(OUT)/data
  GRID_BASE   := $(OUT)/baseline
  SYNTH_ARGS  := --train 160 --val 32 --size 64 --seed 0
  INIT_ARGS   := yolov3-small --img-size 64 --width 0.125 --seed 0
  BASE_ARGS   := --steps 40 --batch-size 16 --lr 5e-3
  RUNS        ?= 2
  RATIOS      := 0 0.5 0.9
  ADV_STEPS   := 4
  GREY_STEPS  := 4
  HYDRA_STEPS := 2
  FT_STEPS    := 2
  VAL_IMAGES  := 16
  DL_BATCHES  := 2
  BATCH       := 16
  BENCH_SEC   := 0.2
else ifeq ($(SCALE),paper)
  # COCO and YOLOv3-416, 10 runs, for GPU machines: give DATA=dir with train.json and
  # val.json (e.g. COCO converted, images beside them) and WEIGHTS=yolov3.weights with CFG.
  GRID_DATA   := $(DATA)
  GRID_BASE   := $(OUT)/baseline
  CFG         ?= yolov3.cfg
  WEIGHTS     ?= yolov3.weights
  RUNS        ?= 10
  ADV_STEPS   := 2000
  GREY_STEPS  := 2000
  HYDRA_STEPS := 500
  FT_STEPS    := 1000
  VAL_IMAGES  := 5000
  DL_BATCHES  := 20
  BATCH       := 16
  BENCH_SEC   := 2
else
  GRID_DATA   := $(DATA)
  GRID_BASE   := $(BASE)
  RUNS        ?= 3
  ADV_STEPS   := 80
  GREY_STEPS  := 120
  HYDRA_STEPS := 20
  FT_STEPS    := 20
  VAL_IMAGES  := 160
  DL_BATCHES  := 16
  BATCH       := 16
  BENCH_SEC   := 1
endif

TRAIN    := $(GRID_DATA)/train.json
VAL_GRID := $(GRID_DATA)/val-grid.json
ROBUST_ARGS := --data $(TRAIN) --adv fgsm --adv-mix 0.5 --batch-size 32 --lr 5e-4 \
               --threads $(GRID_THREADS) --workers 0 --device cpu
SCORE_ARGS  := --data $(TRAIN) --workers 0 --threads $(GRID_THREADS) --device cpu
CELL_ARGS   := --data $(TRAIN) --val $(VAL_GRID) --steps $(FT_STEPS) --batch-size $(BATCH) \
               --threads $(GRID_THREADS) --bench-seconds $(BENCH_SEC)
RUN_IDS  := $(shell seq 1 $(RUNS))
SCENARIOS := unstructured-deeplift unstructured-hydra structured-deeplift structured-hydra \
             unstructured-deeplift-grey
NONZERO  := $(filter-out 0,$(RATIOS))

# $(call timed,stage,command): run a command and log its wall time to OUT/times.log.
timed = s=$$(date +%s%N); $(2) && echo "$(1) $@ $$(( ($$(date +%s%N) - s) / 1000000 ))" \
        >> $(OUT)/times.log

ifeq ($(SCALE),smoke)
$(TRAIN): | $(STAMP)
	rm -rf $(GRID_DATA) && mkdir -p $(OUT)
	$(call timed,data,$(PK) data synth $(GRID_DATA) $(SYNTH_ARGS) > /dev/null)

$(GRID_BASE)/model.st: $(TRAIN)
	mkdir -p $(GRID_BASE)
	$(call timed,baseline,$(PK) init $(INIT_ARGS) --dataset $(TRAIN) \
	  | $(PK) finetune --data $(TRAIN) $(BASE_ARGS) --threads 1 --workers 0 --device cpu -o $@)
endif
ifeq ($(SCALE),paper)
$(GRID_BASE)/model.st: | $(STAMP)
	mkdir -p $(GRID_BASE)
	$(PK) init --cfg $(CFG) --weights $(WEIGHTS) -o $@
ROBUST_ARGS := --data $(TRAIN) --adv pgd --adv-mix 0.5 --batch-size 16 --lr 1e-4 --device cuda
SCORE_ARGS  := --data $(TRAIN) --batch-size 16 --device cuda
endif

$(VAL_GRID): $(TRAIN)
	$(PK) grid subset $(GRID_DATA)/val.json $@ --images $(VAL_IMAGES) > /dev/null

# Per run: the robust colour and grey models and their DeepLIFT scores.
define RUN_RULES
$(OUT)/run$(1)/robust-rgb.st: $(GRID_BASE)/model.st
	@mkdir -p $$(@D)
	$$(call timed,robust,$(PK) finetune $$< $(ROBUST_ARGS) --steps $(ADV_STEPS) --seed $(1) -o $$@)
$(OUT)/run$(1)/robust-grey.st: $(GRID_BASE)/model.st
	@mkdir -p $$(@D)
	$$(call timed,robust,$(PK) finetune $$< $(ROBUST_ARGS) --grey --steps $(GREY_STEPS) --seed $(1) -o $$@)
$(OUT)/run$(1)/deeplift-%.st: $(OUT)/run$(1)/robust-%.st
	$$(call timed,deeplift,$(PK) score --method deeplift $$< $(SCORE_ARGS) --batches $(DL_BATCHES) --seed $(1) -o $$@)
endef
$(foreach k,$(RUN_IDS),$(eval $(call RUN_RULES,$(k))))

# HYDRA scores per run, granularity and ratio.
define HYDRA_RULE
$(OUT)/run$(1)/hydra-$(2)-r$(3).st: $(OUT)/run$(1)/robust-rgb.st
	$$(call timed,hydra,$(PK) score --method hydra $$< $(SCORE_ARGS) --batch-size 16 --ratio $(3) --granularity $(2) --steps $(HYDRA_STEPS) --seed $(1) -o $$@)
endef
$(foreach k,$(RUN_IDS),$(foreach g,weight filter,$(foreach r,$(NONZERO),\
  $(eval $(call HYDRA_RULE,$(k),$(g),$(r))))))

# The scores a cell starts from: $(call scores,scenario,run,ratio).
scores = $(if $(filter 0,$(3)),$(OUT)/run$(2)/robust-$(if $(findstring grey,$(1)),grey,rgb).st,$\
  $(if $(findstring hydra,$(1)),$(OUT)/run$(2)/hydra-$(if $(findstring unstructured,$(1)),weight,filter)-r$(3).st,$\
  $(OUT)/run$(2)/deeplift-$(if $(findstring grey,$(1)),grey,rgb).st))
granularity = $(if $(findstring unstructured,$(1)),weight,filter)

define CELL_RULE
$(OUT)/$(1)/run$(2)/r$(3)/result.json: $(call scores,$(1),$(2),$(3)) $(VAL_GRID)
	$$(call timed,cell,$(PK) grid cell $$< $$(@D) --scenario $(1) --run $(2) --ratio $(3) --granularity $(call granularity,$(1)) --seed $(2) $(CELL_ARGS))
endef
# Ratio 0 is the unpruned robust model: measured once per run in unstructured-deeplift (and in
# the grey scenario), copied to the other colour scenarios.
define REUSE_RULE
$(OUT)/$(1)/run$(2)/r0/result.json: $(OUT)/unstructured-deeplift/run$(2)/r0/result.json
	$(PK) grid cell $(OUT)/run$(2)/robust-rgb.st $$(@D) --scenario $(1) --run $(2) --ratio 0 --reuse $$< $(CELL_ARGS)
endef
REUSED := unstructured-hydra structured-deeplift structured-hydra
$(foreach s,$(SCENARIOS),$(foreach k,$(RUN_IDS),$(foreach r,$(RATIOS),\
  $(if $(and $(filter 0,$(r)),$(filter $(s),$(REUSED))),\
    $(eval $(call REUSE_RULE,$(s),$(k))),$(eval $(call CELL_RULE,$(s),$(k),$(r)))))))

CELLS := $(foreach s,$(SCENARIOS),$(foreach k,$(RUN_IDS),$(foreach r,$(RATIOS),\
  $(OUT)/$(s)/run$(k)/r$(r)/result.json)))

# prunekit writes every model, score file and result atomically (temporary file, then rename),
# so a target that exists is complete. Make deletes the target of a recipe it interrupts even
# when the file was already whole (a cell killed while logging its time); keep them instead.
RUN_FILES := $(foreach k,$(RUN_IDS),$(foreach c,rgb grey,$(OUT)/run$(k)/robust-$(c).st \
  $(OUT)/run$(k)/deeplift-$(c).st) $(foreach g,weight filter,$(foreach r,$(NONZERO),\
  $(OUT)/run$(k)/hydra-$(g)-r$(r).st)))
.PRECIOUS: $(CELLS) $(RUN_FILES) $(GRID_BASE)/model.st

$(OUT)/results.csv: $(CELLS)
	$(PK) grid collect $(OUT) -o $@

$(OUT)/report/report.md: $(OUT)/results.csv
	$(call timed,stats,$(PK) stats $< -o $(OUT)/report)

# The default scale also evaluates the shared baseline it started from.
grid-report: $(OUT)/report/report.md $(if $(filter default,$(SCALE)),$(BASE)/metrics.json)

all-scenarios: | $(STAMP)
	mkdir -p $(OUT)
	OMP_NUM_THREADS=$(GRID_THREADS) $(MAKE) -j$(JOBS) grid-report SCALE=$(SCALE) OUT=$(OUT) \
	  RUNS=$(RUNS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
