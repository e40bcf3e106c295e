# prunekit: every target creates the virtual environment it needs.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PK     := $(BIN)/prunekit

# Every heavy recipe runs as one step, through one prefix:
#
#   $(call step,STAGE,COMMAND[,LOGDIR])  →  scripts/step STAGE $@ LOGDIR -- $(LAUNCH) bash -c 'COMMAND'
#
# (bash -o pipefail, as every recipe here). scripts/step reruns a failed command up to RETRIES
# times, appends `STAGE TARGET MILLISECONDS` to LOGDIR/times.log (default OUT) and prints one
# line per finished step: `[37/135] structured-deeplift run1 r0.75  31 s  · about 24 min left`
# (counted over the whole study by all-scenarios and kitti-study; see `grid` below).
#   LAUNCH=...  a prefix for every step, e.g. LAUNCH="srun --exact -n1 -c2" inside a Slurm
#               allocation makes each step a job step (default empty: plain bash, here)
#   RETRIES=n   reruns of a failed step (default 2 with LAUNCH, 0 without)
#   V=1         print the recipes as they run (default: only the steps' lines and output)
# COMMAND is passed as one argument (its single quotes escaped), so pipes, &&, redirects, quotes
# and $ work as in a plain recipe; like any $(call) argument it cannot contain a comma.
LAUNCH  ?=
RETRIES ?= $(if $(strip $(LAUNCH)),2,0)
export STEP_RETRIES = $(RETRIES)
Q       := $(if $(filter 1,$(V)),,@)
STEP    := scripts/step
step = $(Q)$(STEP) $(1) $@ $(or $(3),$(OUT)) --$(if $(strip $(LAUNCH)), $(strip $(LAUNCH))) bash -o pipefail -c '$(subst ','\'',$(2))'

# The embedded dataset and baseline, shared by everything that follows.
DATA           ?= data/synth
BASE           ?= runs/baseline
BASE_STEPS     ?= 1800
BASE_THREADS   ?= 2

.PHONY: install test test-fast lint bench baseline detr-baseline all-scenarios grid-report \
        kitti-study kitti-report schedule-study schedule-report clean

install: $(STAMP)

# The example model family (examples/family-plugin/, a separate package) is installed too: the
# tests run it through the conformance suite and the command line, as any installed family.
$(STAMP): pyproject.toml examples/family-plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e examples/family-plugin
	touch $(STAMP)

# The full suite, slow end-to-end tests included (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30

# Everything but the slow end-to-end tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

# Style (ruff) and the layering (import-linter's contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check prunekit tests benchmarks examples scripts/step scripts/int8_sqnr.py
	$(BIN)/lint-imports

bench: $(STAMP)
	@failed=; for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || failed="$$failed $$b"; \
	done; if [ -n "$$failed" ]; then echo "missed targets:$$failed"; exit 1; fi

# ---------------------------------------------------------------- the embedded baseline

$(DATA)/train.json: | $(STAMP)
	@mkdir -p $(OUT)
	$(call step,data,rm -rf $(DATA) && $(PK) data synth $(DATA) --train 3000 --val 500 --size 160 --seed 0 > /dev/null)

# Train the small model from scratch (about 15 minutes on two CPU cores), then measure it at
# the mAP threshold (0.001) and at the paper's (0.5).
$(BASE)/model.st: $(DATA)/train.json
	$(Q)mkdir -p $(BASE) $(OUT)
	$(call step,baseline,$(PK) init yolov3-small --dataset $(DATA)/train.json --seed 0 \
	  | $(PK) finetune --data $(DATA)/train.json --val $(DATA)/val.json --steps $(BASE_STEPS) \
	      --batch-size 32 --lr 2e-3 --eval-every 300 --threads $(BASE_THREADS) --device cpu \
	      -o $@)

$(BASE)/metrics.json: $(BASE)/model.st
	$(call step,evaluate,$(PK) detect $< --data $(DATA)/val.json --conf 0.001 --device cpu -o $(BASE)/dets-0.001.csv \
	  && $(PK) evaluate $(BASE)/dets-0.001.csv --gt $(DATA)/val.json -o $(BASE)/metrics-0.001.json \
	  && $(PK) detect $< --data $(DATA)/val.json --conf 0.5 --device cpu -o $(BASE)/dets-0.5.csv \
	  && $(PK) evaluate $(BASE)/dets-0.5.csv --gt $(DATA)/val.json -o $(BASE)/metrics-0.5.json \
	  && cp $(BASE)/metrics-0.001.json $@.tmp && mv $@.tmp $@)

baseline: $(BASE)/metrics.json

# ------------------------------------------------------ the embedded Deformable DETR baseline
#
#   make detr-baseline
#
# Synthetic road scenes in KITTI's own format (2,500 at 384 × 128), converted by `data kitti`
# (a seeded 80/20 split); deformable-detr-small trained from scratch (under 15 minutes on two
# cores, validation mAP every 250 steps in the history); then FGSM-with-random-start adversarial
# fine-tuning. Each model is measured clean and under PGD (ε 0.05, step 0.02, 5 steps):
# DETR_BASE/{model,robust}-{clean,pgd}.json.
#
# Both trainings run as DETR_PROCS processes of one thread each under torchrun (gloo,
# DistributedDataParallel; the batch is the same global batch): on two cores that is 18 % more
# steps per minute than one process with two threads (0.376 s against 0.443 s a step), since
# this model's small kernels scale poorly across threads. DETR_PROCS=1 trains in one process.
KITTI_SYNTH    ?= data/kitti-synth
DETR_BASE      ?= runs/detr-baseline
DETR_STEPS     ?= 2000
DETR_ADV_STEPS ?= 300
DETR_PROCS     ?= 2
DETR_THREADS   ?= $(shell n=$$(( $$(nproc) / $(DETR_PROCS) )); echo $$(( n > 0 ? n : 1 )))
DETR_RUN       := $(if $(filter 1,$(DETR_PROCS)),$(PK),OMP_NUM_THREADS=$(DETR_THREADS) $(BIN)/torchrun \
                    --standalone --nproc-per-node $(DETR_PROCS) -m prunekit)
DETR_TRAIN     := $(KITTI_SYNTH)/coco/train.json
DETR_VAL       := $(KITTI_SYNTH)/coco/val.json
DETR_IMAGES    := --images $(KITTI_SYNTH)/training

$(DETR_TRAIN): | $(STAMP)
	$(Q)rm -rf $(KITTI_SYNTH)
	$(call step,data,$(PK) data synth $(KITTI_SYNTH)/training --layout kitti --images 2500 \
	  --width 384 --height 128 --seed 0 > /dev/null && $(PK) data kitti \
	  $(KITTI_SYNTH)/training $(KITTI_SYNTH)/coco --val-fraction 0.2 --seed 0 > /dev/null,$\
	  $(if $(filter kitti,$(STUDY)),$(OUT),$(KITTI_SYNTH)))

$(DETR_BASE)/model.st: $(DETR_TRAIN)
	$(Q)mkdir -p $(DETR_BASE)
	$(call step,baseline,$(PK) init deformable-detr-small --dataset $(DETR_TRAIN) --seed 0 -o $@.init \
	  && $(DETR_RUN) finetune $@.init --data $(DETR_TRAIN) $(DETR_IMAGES) --val $(DETR_VAL) \
	      --steps $(DETR_STEPS) --batch-size 16 --lr 1e-3 --weight-decay 1e-4 --eval-every 250 \
	      --threads $(DETR_THREADS) --workers 0 --device cpu -o $@ && rm -f $@.init,$\
	  $(if $(filter kitti,$(STUDY)),$(OUT),$(DETR_BASE)))

$(DETR_BASE)/robust.st: $(DETR_BASE)/model.st
	$(call step,robust,$(DETR_RUN) finetune $< --data $(DETR_TRAIN) $(DETR_IMAGES) --adv fgsm \
	  --adv-mix 0.5 --steps $(DETR_ADV_STEPS) --batch-size 16 --lr 2e-4 --threads $(DETR_THREADS) \
	  --workers 0 --device cpu -o $@,$(DETR_BASE))

$(DETR_BASE)/%-clean.json: $(DETR_BASE)/%.st
	$(call step,evaluate,$(PK) detect $< --data $(DETR_VAL) $(DETR_IMAGES) --conf 0.001 --threads 2 --device cpu \
	  | $(PK) evaluate --gt $(DETR_VAL) -o $@,$(DETR_BASE))

$(DETR_BASE)/%-pgd.json: $(DETR_BASE)/%.st
	$(call step,evaluate,$(PK) detect $< --data $(DETR_VAL) $(DETR_IMAGES) --conf 0.001 --attack pgd --eps 0.05 \
	  --alpha 0.02 --steps 5 --threads 2 --device cpu | $(PK) evaluate --gt $(DETR_VAL) -o $@,$(DETR_BASE))

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

ifeq ($(SCALE),smoke)
$(TRAIN): | $(STAMP)
	@mkdir -p $(OUT)
	$(call step,data,rm -rf $(GRID_DATA) && $(PK) data synth $(GRID_DATA) $(SYNTH_ARGS) > /dev/null)

$(GRID_BASE)/model.st: $(TRAIN)
	$(Q)mkdir -p $(GRID_BASE)
	$(call step,baseline,$(PK) init $(INIT_ARGS) --dataset $(TRAIN) \
	  | $(PK) finetune --data $(TRAIN) $(BASE_ARGS) --threads 1 --workers 0 --device cpu -o $@)
endif
ifeq ($(SCALE),paper)
$(GRID_BASE)/model.st: | $(STAMP)
	$(Q)mkdir -p $(GRID_BASE)
	$(call step,baseline,$(PK) init --cfg $(CFG) --weights $(WEIGHTS) -o $@)
ROBUST_ARGS := --data $(TRAIN) --adv pgd --adv-mix 0.5 --batch-size 16 --lr 1e-4 --device cuda
SCORE_ARGS  := --data $(TRAIN) --batch-size 16 --device cuda
endif

$(VAL_GRID): $(TRAIN)
	$(call step,subset,$(PK) grid subset $(GRID_DATA)/val.json $@ --images $(VAL_IMAGES) > /dev/null)

# Per run: the robust colour and grey models and their DeepLIFT scores.
define RUN_RULES
$(OUT)/run$(1)/robust-rgb.st: $(GRID_BASE)/model.st
	@mkdir -p $$(@D)
	$$(call step,robust,$(PK) finetune $$< $(ROBUST_ARGS) --steps $(ADV_STEPS) --seed $(1) -o $$@)
$(OUT)/run$(1)/robust-grey.st: $(GRID_BASE)/model.st
	@mkdir -p $$(@D)
	$$(call step,robust,$(PK) finetune $$< $(ROBUST_ARGS) --grey --steps $(GREY_STEPS) --seed $(1) -o $$@)
$(OUT)/run$(1)/deeplift-%.st: $(OUT)/run$(1)/robust-%.st
	$$(call step,deeplift,$(PK) score --method deeplift $$< $(SCORE_ARGS) --batches $(DL_BATCHES) --seed $(1) -o $$@)
endef
$(foreach k,$(RUN_IDS),$(eval $(call RUN_RULES,$(k))))

# HYDRA scores per run, granularity and ratio.
define HYDRA_RULE
$(OUT)/run$(1)/hydra-$(2)-r$(3).st: $(OUT)/run$(1)/robust-rgb.st
	$$(call step,hydra,$(PK) score --method hydra $$< $(SCORE_ARGS) --batch-size 16 --ratio $(3) --granularity $(2) --steps $(HYDRA_STEPS) --seed $(1) -o $$@)
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
	$$(call step,cell,$(PK) grid cell $$< $$(@D) --scenario $(1) --run $(2) --ratio $(3) --granularity $(call granularity,$(1)) --seed $(2) $(CELL_ARGS))
endef
# Ratio 0 is the unpruned robust model: measured once per run in unstructured-deeplift (and in
# the grey scenario), copied to the other colour scenarios.
define REUSE_RULE
$(OUT)/$(1)/run$(2)/r0/result.json: $(OUT)/unstructured-deeplift/run$(2)/r0/result.json
	$$(call step,reuse,$(PK) grid cell $(OUT)/run$(2)/robust-rgb.st $$(@D) --scenario $(1) --run $(2) --ratio 0 --reuse $$< $(CELL_ARGS))
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

# Both studies write OUT/results.csv and OUT/report/report.md; STUDY says whose rules apply.
ifeq ($(filter kitti schedule,$(STUDY)),)
$(OUT)/results.csv: $(CELLS)
	$(call step,collect,$(PK) grid collect $(OUT) --times $(OUT)/times.log -o $@)

$(OUT)/report/report.md: $(OUT)/results.csv
	$(call step,stats,$(PK) stats $< -o $(OUT)/report)
endif

# The default scale also evaluates the shared baseline it started from.
grid-report: $(OUT)/report/report.md $(if $(filter default,$(SCALE)),$(BASE)/metrics.json)

# $(call grid,OUT,sub-make arguments): a study's sub-make, JOBS steps at a time. It first counts
# the steps it will run, per stage (the `scripts/step` lines of its dry run: when resuming, only
# those left), starts OUT/.progress, then each finished step prints [k/N] and the time left
# (each stage's steps left × its mean time so far, over JOBS jobs). Under
# `make -n` it only prints the sub-make's plan. With JOBS > 1 the commands' own progress bars
# are off (PRUNEKIT_PROGRESS=0): several at once only garble each other.
DRYRUN = $(findstring n,$(firstword -$(MAKEFLAGS)))
GRID_ENV = OMP_NUM_THREADS=$(GRID_THREADS)$(if $(filter-out 1,$(JOBS)), PRUNEKIT_PROGRESS=0)
grid = $(if $(DRYRUN),$(GRID_ENV) $(MAKE) --no-print-directory -j$(JOBS) $(2),$\
  { $(MAKE) --no-print-directory -n $(2) 2>/dev/null || true; } \
  | $(STEP) --start $(1)/.progress - "under $(1) with JOBS=$(JOBS)" && \
  $(GRID_ENV) STEP_PROGRESS=$(1)/.progress STEP_JOBS=$(JOBS) \
  $(MAKE) --no-print-directory -j$(JOBS) $(2))

all-scenarios: | $(STAMP)
	$(Q)mkdir -p $(OUT)
	+$(Q)$(call grid,$(OUT),grid-report SCALE=$(SCALE) OUT=$(OUT) RUNS=$(RUNS))

# ------------------------------------------------------------------ the second study
#
#   make kitti-study [SCALE=smoke|default|full] [RUNS=n] [OUT=dir] [JOBS=n] [KITTI=dir]
#                    [WEIGHTS=dir]
#
# Deformable DETR (and YOLOv3 beside it, on the same data and the same pruning) pruned by L1
# filter norm at 10-50 % (compacted) and by weight magnitude at 10-90 % (per layer), each pruned
# model measured straight after pruning (the study's state, one run: both prunings are
# deterministic) and after a short clean fine-tune (RUNS seeds); ratio 0 is the unpruned
# model, fine-tuned the same way in the fine-tuned state. Every baseline, score file and cell is
# a target written atomically under OUT (default runs/kitti-study): `make -j` parallelises, an
# interrupted study resumes, stage times go to OUT/times.log; OUT/report/report.md has the
# verdicts (`prunekit stats --study kitti`).
#
# Data: synthetic KITTI-format road scenes (those of `make detr-baseline`, whose model is the
# default Deformable DETR baseline), or KITTI=path/to/training (label_2/ and image_2/), split
# 80/20 with seed 0 (the split is the images train.json and val.json list; the conversion's
# summary, seed included, goes to OUT/data/kitti.json). SCALE=full is for a
# GPU machine: deformable-detr (ResNet-50; WEIGHTS=a save_pretrained folder to start from) and
# yolov3-416 on real KITTI.
KOUT := $(if $(filter command line environment override,$(origin OUT)),$(OUT),runs/kitti-study)
K_FILTER := 0.1 0.2 0.3 0.4 0.5
K_WEIGHT := 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9
K_DEVICE := cpu
K_YOLO_STEPS ?= 2000
K_FT_STEPS_DEFAULT ?= 30
ifeq ($(SCALE),smoke)
  # Minutes, for tests: tiny data and models inside OUT, three ratios per method, two runs.
  K_ROOT      := $(KOUT)/data/training
  K_COCO      := $(KOUT)/data/coco
  K_SYNTH     := --images 120 --width 192 --height 64 --seed 0
  K_MODELS    := deformable-detr-small yolov3-small
  K_FILTER    := 0.1 0.3 0.5
  K_WEIGHT    := 0.1 0.5 0.9
  K_RUNS      := $(if $(filter command line environment,$(origin RUNS)),$(RUNS),2)
  K_INIT_deformable-detr-small := deformable-detr-small --img-size 64
  K_INIT_yolov3-small := yolov3-small --img-size 64 --width 0.125
  K_TRAIN_deformable-detr-small := --steps 20 --batch-size 8 --lr 5e-4 --weight-decay 1e-4
  K_TRAIN_yolov3-small := --steps 20 --batch-size 8 --lr 5e-3
  K_FT_STEPS  := 2
  K_VAL_IMAGES := 16
  K_BENCH_SEC := 0.1
else ifeq ($(SCALE),full)
  K_ROOT      := $(KITTI)
  K_COCO      := $(KOUT)/data/coco
  K_MODELS    := deformable-detr yolov3
  K_RUNS      := $(if $(filter command line environment,$(origin RUNS)),$(RUNS),3)
  K_INIT_deformable-detr := $(if $(WEIGHTS),--hf $(WEIGHTS),deformable-detr) --img-size 384
  K_INIT_yolov3 := yolov3 --img-size 416
  K_TRAIN_deformable-detr := --steps 30000 --batch-size 8 --lr 2e-4 --weight-decay 1e-4
  K_TRAIN_yolov3 := --steps 30000 --batch-size 16 --lr 1e-3
  K_FT_STEPS  := 1000
  K_VAL_IMAGES := 100000
  K_BENCH_SEC := 2
  K_DEVICE    := cuda
else
  K_ROOT      := $(if $(KITTI),$(KITTI),$(KITTI_SYNTH)/training)
  K_COCO      := $(if $(KITTI),$(KOUT)/data/coco,$(KITTI_SYNTH)/coco)
  K_MODELS    := deformable-detr-small yolov3-small
  K_RUNS      := $(if $(filter command line environment,$(origin RUNS)),$(RUNS),3)
  K_INIT_deformable-detr-small := deformable-detr-small
  K_INIT_yolov3-small := yolov3-small --img-size 256
  K_TRAIN_deformable-detr-small := --steps $(DETR_STEPS) --batch-size 16 --lr 1e-3 \
                                   --weight-decay 1e-4 --eval-every 200
  K_TRAIN_yolov3-small := --steps $(K_YOLO_STEPS) --batch-size 16 --lr 2e-3 --eval-every 200
  K_FT_STEPS  := $(K_FT_STEPS_DEFAULT)
  K_VAL_IMAGES := 200
  K_BENCH_SEC := 0.5
endif
# The fine-tune after pruning, per model: the baseline's recipe at a lower learning rate. 30
# steps at the higher rates first tried (DETR 2e-4, YOLOv3 1e-3) cost the unpruned models 5 % and
# 8 % of their mAP; at these they keep it (DETR 0.193 against 0.192 unpruned, YOLOv3 0.654
# against 0.679) while YOLOv3 at 30 % filters still recovers 0.425 (0.440 at 1e-3, 0.380 at 2e-4).
K_FT_deformable-detr-small := --lr 5e-5 --weight-decay 1e-4 --batch-size 16
K_FT_deformable-detr := --lr 2e-5 --weight-decay 1e-4 --batch-size 8
K_FT_yolov3-small := --lr 5e-4 --batch-size 16
K_FT_yolov3 := --lr 1e-4 --batch-size 16
K_TRAIN  := $(K_COCO)/train.json
K_VAL    := $(K_COCO)/val-study.json
K_IMAGES := --images $(K_ROOT)
K_THREADS := $(if $(filter cuda,$(K_DEVICE)),,--threads $(GRID_THREADS))
K_RUN_IDS := $(shell seq 1 $(K_RUNS))
K_METHOD_filter := l1-filter
K_METHOD_weight := magnitude
K_RATIOS_filter := 0 $(K_FILTER)
K_RATIOS_weight := 0 $(K_WEIGHT)

# The data: synthetic KITTI-format scenes at the default scale are `make detr-baseline`'s.
ifeq ($(SCALE),smoke)
$(K_TRAIN): | $(STAMP)
	@mkdir -p $(KOUT)
	$(call step,data,rm -rf $(KOUT)/data && $(PK) data synth $(K_ROOT) --layout kitti $(K_SYNTH) > /dev/null \
	  && $(PK) data kitti $(K_ROOT) $(K_COCO) --val-fraction 0.2 --seed 0 \
	     > $(KOUT)/data/kitti.json,$(KOUT))
else ifneq ($(KITTI),)
$(K_TRAIN): | $(STAMP)
	@test -d $(KITTI)/label_2 || { echo "KITTI=$(KITTI) has no label_2/: give KITTI's training folder (label_2/ and image_2/)" >&2; exit 2; }
	$(Q)mkdir -p $(KOUT)/data
	$(call step,data,$(PK) data kitti $(KITTI) $(K_COCO) --val-fraction 0.2 --dontcare ignore \
	  --seed 0 > $(KOUT)/data/kitti.json,$(KOUT))
endif

$(K_VAL): $(K_TRAIN)
	$(call step,subset,$(PK) grid subset $(K_COCO)/val.json $@ --images $(K_VAL_IMAGES) > /dev/null,$(KOUT))

# Baselines: trained from scratch on the study's data (full: from WEIGHTS when given).
define K_BASE_RULE
$(KOUT)/$(1)/baseline.st: $(K_TRAIN)
	@mkdir -p $$(@D)
	$$(call step,baseline,$(PK) init $(K_INIT_$(1)) --dataset $(K_TRAIN) --seed 0 \
	  | $(PK) finetune --data $(K_TRAIN) --val $(K_COCO)/val.json $(K_IMAGES) $(K_TRAIN_$(1)) \
	      $(K_THREADS) --workers 0 \
	      --device $(K_DEVICE) -o $$@,$(KOUT))
endef
# At the default scale on synthetic data the Deformable DETR baseline is `make detr-baseline`'s.
K_SHARED := $(if $(and $(filter default,$(SCALE)),$(if $(KITTI),,y)),deformable-detr-small)
$(foreach m,$(filter-out $(K_SHARED),$(K_MODELS)),$(eval $(call K_BASE_RULE,$(m))))
ifneq ($(K_SHARED),)
$(KOUT)/deformable-detr-small/baseline.st: $(DETR_BASE)/model.st
	@mkdir -p $(@D)
	$(Q)cp $< $@.tmp && mv $@.tmp $@
endif

# Scores: L1 norm of every filter, magnitude of every weight (no data needed).
define K_SCORE_RULE
$(KOUT)/$(1)/scores-$(2).st: $(KOUT)/$(1)/baseline.st
	$$(call step,score,$(PK) score --method $(K_METHOD_$(2)) $$< -o $$@,$(KOUT))
endef
$(foreach m,$(K_MODELS),$(foreach g,filter weight,$(eval $(call K_SCORE_RULE,$(m),$(g)))))

# Cells: <model>.<granularity>.<state>/run<k>/r<ratio>; state `pruned` (no fine-tune, run 1)
# or `finetuned` (runs 1..RUNS). Ratio 0 is measured in the filter scenarios and copied to
# the weight ones (the same unpruned model).
k_cell_args = --granularity $(2) --method $(K_METHOD_$(2)) --data $(K_TRAIN) --val $(K_VAL) \
  $(K_IMAGES) --adv none --no-adv-eval $(K_FT_$(1)) $(K_THREADS) --device $(K_DEVICE) \
  --bench-seconds $(K_BENCH_SEC)
k_steps = $(if $(filter pruned,$(1)),0,$(K_FT_STEPS))
k_runs = $(if $(filter pruned,$(1)),1,$(K_RUN_IDS))
define K_CELL_RULE
$(KOUT)/cells/$(1).$(2).$(3)/run$(4)/r$(5)/result.json: $(KOUT)/$(1)/scores-$(2).st $(K_VAL)
	$$(call step,cell,$(PK) grid cell $$< $$(@D) --scenario $(1).$(2).$(3) --run $(4) \
	  --ratio $(5) --steps $(call k_steps,$(3)) --seed $(4) $(call k_cell_args,$(1),$(2)) \
	  > /dev/null,$(KOUT))
endef
define K_REUSE_RULE
$(KOUT)/cells/$(1).weight.$(2)/run$(3)/r0/result.json: $(KOUT)/cells/$(1).filter.$(2)/run$(3)/r0/result.json
	$$(call step,reuse,$(PK) grid cell $(KOUT)/$(1)/baseline.st $$(@D) --scenario $(1).weight.$(2) --run $(3) \
	  --ratio 0 --reuse $$< $(call k_cell_args,$(1),weight) > /dev/null,$(KOUT))
endef
K_CELLS :=
$(foreach m,$(K_MODELS),$(foreach s,pruned finetuned,$(foreach k,$(call k_runs,$(s)),\
  $(eval $(call K_REUSE_RULE,$(m),$(s),$(k)))\
  $(foreach g,filter weight,$(foreach r,$(K_RATIOS_$(g)),\
    $(eval K_CELLS += $(KOUT)/cells/$(m).$(g).$(s)/run$(k)/r$(r)/result.json)\
    $(if $(and $(filter weight,$(g)),$(filter 0,$(r))),,\
      $(eval $(call K_CELL_RULE,$(m),$(g),$(s),$(k),$(r)))))))))

.PRECIOUS: $(K_CELLS) $(foreach m,$(K_MODELS),$(KOUT)/$(m)/baseline.st \
  $(KOUT)/$(m)/scores-filter.st $(KOUT)/$(m)/scores-weight.st)

ifeq ($(STUDY),kitti)
$(KOUT)/results.csv: $(K_CELLS)
	$(call step,collect,$(PK) grid collect $(KOUT)/cells -o $@,$(KOUT))

$(KOUT)/report/report.md: $(KOUT)/results.csv
	$(call step,stats,$(PK) stats $< --study kitti -o $(KOUT)/report,$(KOUT))
endif

kitti-report: $(KOUT)/report/report.md

kitti-study: | $(STAMP)
	$(if $(filter full,$(SCALE)),$(if $(KITTI),,$(error SCALE=full runs on real KITTI: give KITTI=path/to/training (label_2/ and image_2/))))
	$(Q)mkdir -p $(KOUT)
	+$(Q)$(call grid,$(KOUT),kitti-report STUDY=kitti SCALE=$(SCALE) OUT=$(KOUT) RUNS=$(K_RUNS) \
	  DETR_PROCS=1 DETR_THREADS=$(GRID_THREADS) $(if $(KITTI),KITTI=$(KITTI)) $(if $(WEIGHTS),WEIGHTS=$(WEIGHTS)))

# ------------------------------------------------------------------ the schedule study
#
#   make schedule-study [SCALE=smoke|default] [RUNS=n] [OUT=dir] [JOBS=n]
#
# One-shot pruning against gradual pruning (Zhu & Gupta's cubic schedule, pruning while
# fine-tuning) and against per-layer ratios allocated from a sensitivity analysis, for both
# families, under attack. Each model starts from its robust baseline: YOLOv3 is the one `make
# all-scenarios` trains in its first run (the embedded baseline, `make baseline`, fine-tuned
# under FGSM), Deformable DETR `make detr-baseline`'s robust model. It is scored (weight
# magnitude, filter L1 norm); `prunekit sensitivity` measures each filter group alone on a
# validation subset; then per run and ratio every schedule gets the same FGSM fine-tune
# (`prunekit grid cell --schedule`): `one-shot` prunes before it (filters compacted), `cubic`
# along it (pruning ends at two thirds of the steps, then compacted), `sensitivity` prunes once
# at the ratios allocated for the uniform ratio's MACs (no group beyond the next measured ratio
# above the uniform one). Ratio 0 is the unpruned model fine-tuned
# as long (the control). Every cell is measured clean and under PGD (ε 0.05, step 0.02, 5 steps)
# on the subset. OUT (default runs/schedule-study)/report/report.md has the verdicts (`prunekit
# stats --study schedule`, rules declared in prunekit/stats/findings/schedule.py); targets are
# written atomically (models, scores and sensitivity CSVs under OUT/start), so an interrupted study resumes and `make -j` parallelises.
SOUT := $(if $(filter command line environment override,$(origin OUT)),$(OUT),runs/schedule-study)
S_RUNS := $(if $(filter command line environment,$(origin RUNS)),$(RUNS),3)
S_MODELS := yolov3-small deformable-detr-small
ifeq ($(SCALE),smoke)
  # Minutes, for tests: one tiny KITTI-format dataset and tiny models inside OUT, two runs,
  # one ratio per granularity.
  S_RUNS := $(if $(filter command line environment,$(origin RUNS)),$(RUNS),2)
  S_ROOT := $(SOUT)/synth/training
  S_COCO := $(SOUT)/synth/coco
  S_TRAIN_yolov3-small := $(S_COCO)/train.json
  S_TRAIN_deformable-detr-small := $(S_COCO)/train.json
  S_IMAGES_yolov3-small := --images $(S_ROOT)
  S_IMAGES_deformable-detr-small := --images $(S_ROOT)
  S_INIT_yolov3-small := yolov3-small --img-size 64 --width 0.125
  S_INIT_deformable-detr-small := deformable-detr-small --img-size 64
  S_BASE_ARGS := --steps 20 --batch-size 8 --lr 5e-3
  S_ROBUST_ARGS := --adv fgsm --steps 2 --batch-size 8 --lr 5e-4
  S_FT_yolov3-small := --steps 6 --batch-size 8 --lr 1e-3
  S_FT_deformable-detr-small := --steps 6 --batch-size 8 --lr 1e-4 --weight-decay 1e-4
  S_WEIGHT_yolov3-small := 0.9
  S_WEIGHT_deformable-detr-small := 0.7
  S_FILTER := 0.5
  S_SENS_RATIOS := 0.25,0.5,0.75
  S_VAL_IMAGES := 16
  S_SENS_IMAGES := 8
  S_BENCH_SEC := 0.05
else
  S_TRAIN_yolov3-small := $(DATA)/train.json
  S_TRAIN_deformable-detr-small := $(DETR_TRAIN)
  S_IMAGES_yolov3-small :=
  S_IMAGES_deformable-detr-small := $(DETR_IMAGES)
  # The fine-tune every schedule gets: YOLOv3 at half the baseline's learning rate, Deformable
  # DETR at a tenth of its baseline's (a DETR's fine-tunes take lower rates), with the first
  # study's FGSM; a DETR step costs about three times a YOLOv3 step here (measured: 5 s against
  # 1.5 s at batch 16, one thread), so it gets fewer at half the batch.
  S_FT_yolov3-small := --steps 60 --batch-size 16 --lr 1e-3
  S_FT_deformable-detr-small := --steps 20 --batch-size 8 --lr 1e-4 --weight-decay 1e-4
  # Weights: the paper's 75 % and 90 % (YOLOv3), the second study's 40 % and 70 % (DETR).
  S_WEIGHT_yolov3-small := 0.75 0.9
  S_WEIGHT_deformable-detr-small := 0.4 0.7
  S_FILTER := 0.5 0.7
  S_SENS_RATIOS := 0.2,0.4,0.6,0.8
  S_VAL_IMAGES := 64
  S_SENS_IMAGES := 32
  S_BENCH_SEC := 0.3
endif
S_VAL = $(dir $(S_TRAIN_$(1)))val-schedule.json
S_RUN_IDS := $(shell seq 1 $(S_RUNS))
S_METHOD_weight := magnitude
S_METHOD_filter := l1-filter
S_SCHEDULES_weight := one-shot cubic
# Weight cells prune every layer at the ratio (layer, as declared and first run) or by one
# magnitude threshold across layers (S_SCOPE=global: in the README's runs 7-9 YOLOv3 keeps 63-95 %
# of the control's mAP at 75-90 %, where layer-uniform pruning keeps 6-23 %; Deformable DETR
# needed 100 steps at 4e-4 there, 'S_FT_deformable-detr-small=--steps 100 --batch-size 8 --lr
# 4e-4 --weight-decay 1e-4': at 1e-4 global pruning lost more than layer pruning).
S_SCOPE ?= layer
# Per model, extra flags for the cubic cells' schedule (empty: `grid cell`'s defaults, ending at
# two thirds of the steps with an update every tenth of that). The README's runs 51-54 are
# 'S_FT_yolov3-small=--steps 300 --batch-size 16 --lr 1e-3' 'S_CUBIC_yolov3-small=--prune-end 150
# --prune-every 10'; runs 81-84, where both halves of issue 26's YOLOv3 line hold, are
# 'S_FT_yolov3-small=--steps 600 --batch-size 16 --lr 1e-3' 'S_CUBIC_yolov3-small=--prune-end 300
# --prune-every 20'.
S_CUBIC_yolov3-small ?=
S_CUBIC_deformable-detr-small ?=
S_SCHEDULES_filter := one-shot cubic sensitivity
S_THREADS := --threads $(GRID_THREADS)

ifeq ($(SCALE),smoke)
$(S_COCO)/train.json: | $(STAMP)
	@mkdir -p $(SOUT)
	$(call step,data,rm -rf $(SOUT)/synth && $(PK) data synth $(S_ROOT) --layout kitti --images 120 \
	  --width 192 --height 64 --seed 0 > /dev/null && $(PK) data kitti $(S_ROOT) $(S_COCO) \
	  --val-fraction 0.2 --seed 0 > /dev/null,$(SOUT))

define S_BASE_RULE
$(SOUT)/start/$(1)-robust.st: $(S_COCO)/train.json
	@mkdir -p $$(@D)
	$$(call step,robust,$(PK) init $(S_INIT_$(1)) --dataset $(S_COCO)/train.json --seed 0 \
	  | $(PK) finetune --data $(S_COCO)/train.json $(S_IMAGES_$(1)) $(S_BASE_ARGS) $(S_THREADS) \
	      --workers 0 --device cpu \
	  | $(PK) finetune --data $(S_COCO)/train.json $(S_IMAGES_$(1)) $(S_ROBUST_ARGS) \
	      $(S_THREADS) --workers 0 --device cpu -o $$@,$(SOUT))
endef
$(foreach m,$(S_MODELS),$(eval $(call S_BASE_RULE,$(m))))
else
# The first study's robust model of run 1, from the embedded baseline.
$(SOUT)/start/yolov3-small-robust.st: $(BASE)/model.st
	@mkdir -p $(@D)
	$(call step,robust,$(PK) finetune $< --data $(DATA)/train.json --adv fgsm --adv-mix 0.5 \
	  --batch-size 32 --lr 5e-4 --steps 80 --seed 1 $(S_THREADS) --workers 0 \
	  --device cpu -o $@,$(SOUT))

$(SOUT)/start/deformable-detr-small-robust.st: $(DETR_BASE)/robust.st
	@mkdir -p $(@D)
	$(Q)cp $< $@.tmp && mv $@.tmp $@
endif

# A fixed validation subset beside each dataset's val.json (one, when the models share data).
define S_SUBSET_RULE
$(1): $(dir $(1))train.json
	$$(call step,subset,$(PK) grid subset $(dir $(1))val.json $$@ --images $(S_VAL_IMAGES) > /dev/null,$(SOUT))
endef
$(foreach v,$(sort $(foreach m,$(S_MODELS),$(call S_VAL,$(m)))),$(eval $(call S_SUBSET_RULE,$(v))))

define S_MODEL_RULES
$(SOUT)/start/$(1)-scores-weight.st: $(SOUT)/start/$(1)-robust.st
	$$(call step,score,$(PK) score --method magnitude $$< -o $$@,$(SOUT))
$(SOUT)/start/$(1)-scores-filter.st: $(SOUT)/start/$(1)-robust.st
	$$(call step,score,$(PK) score --method l1-filter $$< -o $$@,$(SOUT))
$(SOUT)/start/$(1)-sensitivity-filter.csv: $(SOUT)/start/$(1)-scores-filter.st $(call S_VAL,$(1))
	$$(call step,sensitivity,$(PK) sensitivity $$< --granularity filter --data $(call S_VAL,$(1)) \
	  $(S_IMAGES_$(1)) --max-images $(S_SENS_IMAGES) --ratios $$(S_SENS_RATIOS) $(S_THREADS) \
	  --device cpu -o $$@ > /dev/null,$(SOUT))
endef
$(foreach m,$(S_MODELS),$(eval $(call S_MODEL_RULES,$(m))))

# Cells: cells/<model>.<granularity>.<schedule>/run<k>/r<ratio>. Ratio 0 (the control) is
# fine-tuned once per model and run, in <model>.weight.one-shot: the report takes every share of
# it, and draws and tabulates it beside every schedule.
s_cell_args = --granularity $(2) --method $(S_METHOD_$(2)) --data $(S_TRAIN_$(1)) \
  --val $(call S_VAL,$(1)) $(S_IMAGES_$(1)) --adv fgsm $(S_FT_$(1)) $(S_THREADS) --device cpu \
  --bench-seconds $(S_BENCH_SEC) --schedule $(3)$(if $(filter sensitivity,$(3)), --ratios-from \
  $(SOUT)/start/$(1)-sensitivity-filter.csv)$(if $(filter weight,$(2)), --scope $(S_SCOPE))$\
  $(if $(filter cubic,$(3)),$(if $(S_CUBIC_$(1)), $(S_CUBIC_$(1))))
define S_CELL_RULE
$(SOUT)/cells/$(1).$(2).$(3)/run$(4)/r$(5)/result.json: $(SOUT)/start/$(1)-scores-$(2).st $(call S_VAL,$(1)) $(if $(filter sensitivity,$(3)),$(SOUT)/start/$(1)-sensitivity-filter.csv)
	$$(call step,cell,$(PK) grid cell $$< $$(@D) --scenario $(1).$(2).$(3) --run $(4) --ratio $(5) \
	  --seed $(4) $(call s_cell_args,$(1),$(2),$(3)) > /dev/null,$(SOUT))
endef
S_CELLS :=
$(foreach m,$(S_MODELS),$(foreach g,weight filter,$(foreach s,$(S_SCHEDULES_$(g)),\
  $(foreach k,$(S_RUN_IDS),$(foreach r,$(if $(and $(filter weight,$(g)),$(filter one-shot,$(s))),0) \
    $(if $(filter weight,$(g)),$(S_WEIGHT_$(m)),$(S_FILTER)),\
    $(eval S_CELLS += $(SOUT)/cells/$(m).$(g).$(s)/run$(k)/r$(r)/result.json)\
    $(eval $(call S_CELL_RULE,$(m),$(g),$(s),$(k),$(r))))))))

.PRECIOUS: $(S_CELLS) $(foreach m,$(S_MODELS),$(SOUT)/start/$(m)-robust.st $(SOUT)/start/$(m)-scores-weight.st \
  $(SOUT)/start/$(m)-scores-filter.st $(SOUT)/start/$(m)-sensitivity-filter.csv)

ifeq ($(STUDY),schedule)
$(SOUT)/results.csv: $(S_CELLS)
	$(call step,collect,$(PK) grid collect $(SOUT)/cells -o $@,$(SOUT))

$(SOUT)/report/report.md: $(SOUT)/results.csv
	$(call step,stats,$(PK) stats $< --study schedule -o $(SOUT)/report,$(SOUT))
endif

schedule-report: $(SOUT)/report/report.md

schedule-study: | $(STAMP)
	$(Q)mkdir -p $(SOUT)
	+$(Q)$(call grid,$(SOUT),schedule-report STUDY=schedule SCALE=$(SCALE) OUT=$(SOUT) \
	  RUNS=$(S_RUNS) DETR_PROCS=1 DETR_THREADS=$(GRID_THREADS))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
