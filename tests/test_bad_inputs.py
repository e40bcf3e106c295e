"""The bad-input table (issue 16): every command, both model families, one line per mistake.

Each case is an argv with ``{name}`` placeholders for files built once per module (``{out}`` is
a fresh, empty folder per case) and the fragment its error line must contain. For each case:
exit code 1 (2 for click's own usage errors), exactly one non-empty line on stderr holding the
fragment, no traceback, and nothing written under ``{out}``. A few cases run again through
``python -m prunekit`` (and a terminal as stdin or stdout) to check the same end to end.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import app
from tests.conftest import ROOT

# `@` in a finetune case: the 16-image training set, no worker processes to start.
SMALL = ["--batch-size", "4", "--workers", "0", "--device", "cpu"]
HUGE = str(10**6)


def case(argv: str, fragment: str, *, code: int = 1, id: str | None = None,  # noqa: A002
         xfail: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(argv.split(), fragment, code, id=id or argv[:70], marks=marks)


CASES = [
    # --- init ---------------------------------------------------------------------------------
    case("init yolov3-small --classes 0 --img-size 64 --width 0.125 -o {out}/x.st",
         "--classes must be at least 1, got 0"),
    case("init yolov3-small --classes -2 --img-size 64 --width 0.125 -o {out}/x.st",
         "--classes must be at least 1, got -2"),
    case("init yolov3-small --classes 3 --img-size -64 --width 0.125 -o {out}/x.st",
         "--img-size must be a positive multiple of 32, got -64"),
    case("init yolov3-small --classes 3 --img-size 63 --width 0.125 -o {out}/x.st",
         "--img-size must be a positive multiple of 32, got 63"),
    case("init yolov3-small --classes 3 --img-size 0 --width 0.125 -o {out}/x.st",
         "--img-size must be a positive multiple of 32, got 0"),
    case("init yolov3-small --classes 3 --img-size " + HUGE + " --width 0.125 -o {out}/x.st",
         "is too large: at most 4096 pixels"),
    case("init yolov3-small --classes 3 --img-size 64 --width 0 -o {out}/x.st",
         "width and depth multipliers must lie in (0, 4]"),
    case("init yolov3-small --classes 3 --img-size 64 --width 0.125 --depth -1 -o {out}/x.st",
         "width and depth multipliers must lie in (0, 4]"),
    case("init yolov4 --classes 3 --img-size 64 -o {out}/x.st", "unknown architecture 'yolov4'"),
    case("init --classes 3 -o {out}/x.st", "give either an architecture name or files to import"),
    case("init yolov3-small --img-size 64 --width 0.125 -o {out}/x.st", "how many classes?"),
    case("init yolov3-small --names a,,b --img-size 64 --width 0.125 -o {out}/x.st",
         "has an empty name; give one name per class"),
    case("init yolov3-small --names a,a --img-size 64 --width 0.125 -o {out}/x.st",
         "--names names 'a' twice; give each class one name"),
    case("init yolov3-small --classes 3 --names a,b --img-size 64 --width 0.125 -o {out}/x.st",
         "--classes 3 but 2 names were given"),
    case("init yolov3-small --dataset {out}/none.json --width 0.125 -o {out}/x.st",
         "none.json does not exist; check the path"),
    case("init yolov3-small --dataset {text} --width 0.125 -o {out}/x.st",
         "is not valid JSON"),
    case("init yolov3-small --classes 3 --img-size 64 --width 0.125 -o {out}/no/x.st",
         "folder {out}/no does not exist; create it first"),
    case("init yolov3-small --classes 3 --img-size 64 --width 0.125 -o {out}",
         "is a directory; give a file name for the output"),
    case("init --cfg {text} -o {out}/x.st", "cannot parse 'hello world'"),
    case("init --hf {hfempty} -o {out}/x.st", "has no config.json"),
    case("init --hf {out}/nothere -o {out}/x.st", "is not a folder; give the folder"),
    case("init deformable-detr-small --classes 3 --img-size 16 -o {out}/x.st",
         "must be two whole numbers of pixels, at least 32"),
    case("init deformable-detr-small --classes 3 --img-size 0 -o {out}/x.st",
         "at least 32"),
    case("init deformable-detr-small --classes 3 --img-size 64 --width 0.5 -o {out}/x.st",
         "--width is an option of the yolov3 family; deformable-detr-small is a "
         "deformable-detr member"),
    case("init deformable-detr-small --classes 3 --img-size " + HUGE + " -o {out}/x.st",
         "is too large: each side at most 4096 pixels"),
    # --- data synth ---------------------------------------------------------------------------
    case("data synth {out}/s --train 0 --val 8 --size 64", "--train 0 is too small"),
    case("data synth {out}/s --train -1 --val 8 --size 64", "--train -1 is too small"),
    case("data synth {out}/s --train 4 --val 2 --size 8", "--size 8 is too small"),
    case("data synth {out}/s --train 4 --val 2 --size 1000000", "--size 1000000 is too large"),
    case("data synth {out}/s --layout kitti --images 4 --width 1000000 --height 64",
         "is too large; give at most 4096 pixels a side"),
    case("data synth {out}/s --train 4 --val 2 --size 0", "--size 0 is too small"),
    case("data synth {out}/s --layout voc", "--layout 'voc' is unknown; use coco or kitti"),
    case("data synth {out}/s --train 4 --val 2 --size 64 --width 500",
         "--width has no effect with --layout coco; leave it out"),
    case("data synth {out}/s --layout kitti --images 4 --train 5 --size 64",
         "--train, --size have no effect with --layout kitti; leave them out"),
    case("data synth {synth} --train 4 --val 2 --size 64", "exists; remove it or choose another"),
    case("data synth {out}/s --layout kitti --images 0", "--images 0 is too small"),
    case("data synth {out}/s --layout kitti --images 4 --width 128 --height -5",
         "--width 128 --height -5 is too small"),
    # --- data kitti ---------------------------------------------------------------------------
    case("data kitti {ks} {out}/k --val-fraction 1.0", "--val-fraction 1.0 is outside [0, 1)"),
    case("data kitti {ks} {out}/k --val-fraction -0.1", "--val-fraction -0.1 is outside [0, 1)"),
    case("data kitti {ks} {out}/k --classes Truck", "no object in"),
    case("data kitti {ks} {out}/k --classes ,", "--classes names none"),
    case("data kitti {ks} {out}/k --dontcare keep", "--dontcare must be 'drop' or 'ignore'"),
    case("data kitti {synth} {out}/k", "label_2 is not a folder"),
    case("data kitti {ks_bad} {out}/k", "has right < left or bottom < top"),
    case("data kitti {ks} {text}", "is a file; OUT must be a folder"),
    # --- finetune -----------------------------------------------------------------------------
    case("finetune {y} --data {train} --steps 1 --batch-size 0 --device cpu -o {out}/x.st",
         "--batch-size must be at least 1, got 0"),
    case("finetune {y} --data {train} --steps 1 --batch-size 100 --device cpu -o {out}/x.st",
         "fewer than --batch-size 100"),
    case("finetune {y} --data {train} --steps 0 @ -o {out}/x.st", "--steps must be at least 1"),
    case("finetune {y} --data {train} --epochs 0 @ -o {out}/x.st",
         "--epochs must be positive, got 0"),
    case("finetune {y} --data {train} --steps 1 --lr -1 @ -o {out}/x.st",
         "--lr must be positive"),
    case("finetune {y} --data {train} --steps 1 --adv cw @ -o {out}/x.st",
         "--adv 'cw' is unknown; use none, pgd or fgsm"),
    case("finetune {y} --data {train} --steps 1 --adv pgd --eps 2 @ -o {out}/x.st",
         "--eps must lie in (0, 1]"),
    case("finetune {y} --data {train} --steps 1 --adv pgd --alpha 0 @ -o {out}/x.st",
         "--alpha must lie in (0, 1]"),
    case("finetune {y} --data {train} --steps 1 --adv pgd --attack-steps 0 @ -o {out}/x.st",
         "--attack-steps must be at least 1"),
    case("finetune {y} --data {train} --steps 1 --eps 0.1 @ -o {out}/x.st",
         "--eps has no effect without --adv pgd or fgsm; leave it out"),
    case("finetune {y} --data {train} --steps 1 --pgd-steps 3 @ -o {out}/x.st",
         "--attack-steps has no effect without --adv pgd or fgsm"),
    case("finetune {y} --data {train} --steps 1 --adv-mix 0.3 @ -o {out}/x.st",
         "--adv-mix has no effect without --adv pgd or fgsm; leave it out"),
    case("finetune {y} --data {train} --steps 1 --eval-every 5 @ -o {out}/x.st",
         "--eval-every has no effect without --val (the data it evaluates on); leave it out"),
    case("finetune {y} --data {train} --steps 1 --schedule linear --scope global @ -o {out}/x.st",
         "--schedule, --scope have no effect without --prune-to RATIO; leave them out"),
    case("finetune {y} --data {train} --steps 1 --epochs 2 @ -o {out}/x.st", "--epochs has no "
         "effect with --steps (the run's length is one or the other); leave it out"),
    case("finetune {y} --data {train} --steps 4 --prune-to 0.5 --schedule one-shot "
         "--prune-every 2 @ -o {out}/x.st", "--prune-every has no effect with --schedule one-shot"),
    case("finetune {y} --data {train} --steps 4 --prune-to 0.5 --schedule step @ -o {out}/x.st",
         "--schedule 'step' is unknown; use one-shot, linear or cubic"),
    case("finetune {y} --data {train} --steps 4 --prune-to 1 @ -o {out}/x.st",
         "--prune-to must lie in (0, 1)"),
    case("finetune {y} --data {train} --steps 1 --weight-decay -0.1 @ -o {out}/x.st",
         "--weight-decay must be at least 0, got -0.1"),
    case("finetune {y} --data {train} --steps 1 --warmup -1 @ -o {out}/x.st",
         "--warmup must be at least 0 (no warm-up), got -1"),
    case("finetune {y} --data {train} --steps 2 --warmup 3 @ -o {out}/x.st",
         "--warmup 3 is longer than the run (2 steps)"),
    case("finetune {y} --data {train} --steps 1 --save-every -1 @ -o {out}/x.st",
         "--save-every must be at least 0"),
    case("finetune {y} --data {train} --steps 1 --bn-batches -1 @ -o {out}/x.st",
         "--bn-batches must be at least 0 (off), got -1"),
    case("finetune {y} --data {train} --val {val} --steps 1 --eval-every -2 @ -o {out}/x.st",
         "--eval-every must be at least 0 (only at the end), got -2"),
    case("finetune {y} --data {train} --steps 1 --adv-mix 1.5 --adv pgd @ -o {out}/x.st",
         "--adv-mix must lie in [0, 1]"),
    case("finetune {y} --data {train} --steps 1 --img-size 48 @ -o {out}/x.st",
         "--img-size must be a positive multiple of 32, got 48"),
    case("finetune {y} --data {train} --steps 1 --img-size " + HUGE + " @ -o {out}/x.st",
         "is too large: at most 4096 pixels"),
    case("finetune {d} --data {train} --steps 1 --img-size " + HUGE + " @ -o {out}/x.st",
         "is too large: each side at most 4096 pixels"),
    case("finetune {y} --data {train} --steps 1 --device tpu -o {out}/x.st",
         "--device 'tpu' is unknown"),
    case("finetune {y} --data {train} --steps 1 @ --workers -1 -o {out}/x.st",
         "--workers must be at least 0"),
    case("finetune {y} --data {train} --steps 1 --threads 0 @ -o {out}/x.st",
         "--threads must be at least 1, got 0"),
    case("finetune {y} --data {train} --steps 1 --resume @ -o {out}/x.st",
         "--resume: no training state at"),
    case("finetune {y} --data {val_escape} --steps 1 @ -o {out}/x.st", "escapes the image root"),
    case("finetune {y} --data {val_abs} --steps 1 @ -o {out}/x.st", "escapes the image root"),
    case("finetune {y} --data {val_missing} --steps 1 @ -o {out}/x.st",
         "images/missing.png does not exist"),
    case("finetune {y} --data {val_cls} --steps 1 @ -o {out}/x.st",
         "has category 42, which is not in 'categories'"),
    case("finetune {y} --data {val_noimg} --steps 1 @ -o {out}/x.st", "lists no images"),
    case("finetune {y} --data {val_nanbox} --steps 1 @ -o {out}/x.st", "bbox [1, 2, nan, 3]"),
    case("finetune {y} --data {val_negbox} --steps 1 @ -o {out}/x.st",
         "with a negative width or height"),
    case("finetune {y} --data {kitti_train} --steps 1 @ -o {out}/x.st",
         "are not among the model's classes"),
    case("finetune {y} --data {train} --steps 1 --val {text} @ -o {out}/x.st",
         "is not valid JSON"),
    case("finetune {empty} --data {train} --steps 1 @ -o {out}/x.st", "is empty"),
    case("finetune {y} --data {train} --steps 1 @ -o {out}", "is a directory"),
    case("finetune {y} --data {train} --steps 1 @ -o {out}/no/x.st", "does not exist; create"),
    case("finetune {y} --steps 1", "Missing option '--data'", code=2),
    # --- score --------------------------------------------------------------------------------
    case("score {y} --method deeplift2 -o {out}/x.st", "--method 'deeplift2' is unknown"),
    case("score {y} --method taylor -o {out}/x.st", "--method taylor needs training images"),
    case("score {y} --method l1-filter --adv pgd --eps 0.1 -o {out}/x.st", "--adv, --eps have "
         "no effect with --method l1-filter (read by hydra only); leave them out"),
    case("score {y} --method magnitude --data {train} -o {out}/x.st", "--data has no effect "
         "with --method magnitude (read by taylor, deeplift, hydra only); leave it out"),
    case("score {y} --method deeplift --data {train} --lr 0.2 -o {out}/x.st",
         "--lr has no effect with --method deeplift (read by hydra only); leave it out"),
    case("score {y} --method hydra --data {train} --ratio 1.5 -o {out}/x.st",
         "--ratio must lie in [0, 1) (the fraction removed), got 1.5"),
    case("score {y} --method hydra --data {train} --granularity channel -o {out}/x.st",
         "--granularity 'channel' is unknown"),
    case("score {y} --method hydra --data {train} --scope all -o {out}/x.st",
         "--scope 'all' is unknown"),
    case("score {y} --method hydra --data {train} --steps 0 -o {out}/x.st",
         "--steps must be at least 1, got 0"),
    case("score {y} --method taylor --data {train} --batches -1 -o {out}/x.st",
         "--batches must be at least 1, got -1"),
    case("score {y} --method hydra --data {train} --lr -1 -o {out}/x.st",
         "--lr must be positive, got -1"),
    case("score {y} --method deeplift --data {train} --baseline pink -o {out}/x.st",
         "--baseline 'pink' is unknown"),
    case("score {y} --method taylor --data {train} --batch-size 0 -o {out}/x.st",
         "must be at least 1"),
    case("score {y} --method taylor --data {train} --device tpu -o {out}/x.st",
         "--device 'tpu' is unknown"),
    case("score {y} --method taylor --data {train} --workers -1 -o {out}/x.st",
         "--workers must be at least 0"),
    case("score {d} --method deeplift --data {train} -o {out}/x.st",
         "DeepLIFT cannot be right for Deformable DETR"),
    case("score {y} --method taylor --data {text} -o {out}/x.st", "is not valid JSON"),
    case("score {trunc} --method magnitude -o {out}/x.st", "is truncated"),
    case("score {y} --method magnitude -o {out}/no/x.st", "does not exist; create it first"),
    # --- mask ---------------------------------------------------------------------------------
    case("mask {y} --ratio 0.5 -o {out}/x.st", "has no scores for"),
    case("mask {ym} --ratio 0.5 -o {out}/x.st", "has no scores for"),
    case("mask {ys} --ratio 1.0 -o {out}/x.st", "--ratio must lie in [0, 1)"),
    case("mask {ys} --ratio -0.1 -o {out}/x.st", "--ratio must lie in [0, 1)"),
    case("mask {ys} --ratio nan -o {out}/x.st", "got nan"),
    case("mask {ys} --ratio 0.5 --granularity channel -o {out}/x.st",
         "--granularity 'channel' is unknown"),
    case("mask {ds} --ratio 0.5 --scope everywhere -o {out}/x.st", "--scope 'everywhere'"),
    case("mask {ys} --ratio 0.5 --structured --granularity kernel -o {out}/x.st",
         "--structured means --granularity filter, not kernel"),
    case("mask {empty} --ratio 0.5 -o {out}/x.st", "is empty; expected a prunekit safetensors"),
    case("mask {trunc} --ratio 0.5 -o {out}/x.st", "is truncated or not safetensors"),
    case("mask {ys} --ratio 0.5 --structured --round-to 0 -o {out}/x.st",
         "--round-to must be at least 1"),
    case("mask {ys} --ratio 0.5 --round-to 8 -o {out}/x.st",
         "--round-to rounds the filters a layer keeps; it needs --granularity filter"),
    case("mask {text} --ratio 0.5 -o {out}/x.st", "is truncated or not safetensors"),
    case("mask {pickle} --ratio 0.5 -o {out}/x.st", "is a pickle / torch.save file"),
    case("mask {out}/none.st --ratio 0.5 -o {out}/x.st", "does not exist; check the path"),
    case("mask {synth} --ratio 0.5 -o {out}/x.st", "is a directory, not a checkpoint file"),
    case("mask {ys} --ratio 0.5 -o {out}", "is a directory; give a file name for the output"),
    case("mask {ds} --ratio 0.5 -o {out}/no/x.st", "does not exist; create it first"),
    case("mask {ys} --ratio half -o {out}/x.st", "Invalid value for '--ratio'", code=2),
    # --- mask --ratios-from ----------------------------------------------------------------------
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.01 -o {out}/x.st",
         "--target-macs 0.01 is below what the measured ratios reach"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 1.5 -o {out}/x.st",
         "--target-macs must lie in (0, 1]"),
    case("mask {ys} --ratios-from {sens_y} --target-params 0 -o {out}/x.st",
         "--target-params must lie in (0, 1]"),
    case("mask {ys} --ratios-from {sens_d} --target-macs 0.5 -o {out}/x.st",
         "was measured on another model"),
    case("mask {ys} --ratios-from {dets} --target-macs 0.5 -o {out}/x.st",
         "is not a sensitivity CSV (no 'group' column)"),
    case("mask {ys} --ratios-from {sens_bad} --target-macs 0.5 -o {out}/x.st",
         "holds ratios outside (0, 1)"),
    case("mask {ys} --ratios-from {out}/none.csv --target-macs 0.5 -o {out}/x.st",
         "none.csv does not exist"),
    case("mask {ys} --ratios-from {sens_y} -o {out}/x.st", "takes one of --target-macs"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.5 --structured --round-to 8 "
         "-o {out}/x.st", "--round-to rounds a uniform --ratio"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.5 --ratio 0.5 -o {out}/x.st",
         "without --ratio"),
    case("mask {ys} -o {out}/x.st", "how much to prune? give --ratio R"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.5 --max-ratio 1 -o {out}/x.st",
         "--max-ratio must lie in (0, 1)"),
    case("mask {ys} --ratio 0.5 --max-ratio 0.6 -o {out}/x.st",
         "--max-ratio bounds the ratios --ratios-from allocates"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.6 --max-ratio 0.05 -o {out}/x.st",
         "raise --max-ratio"),
    case("mask {ys} --ratios-from {sens_y} --target-latency 5 -o {out}/x.st",
         "--target-latency needs filter groups"),
    case("mask {ys} --ratios-from {sens_y} --target-latency -5 -o {out}/x.st",
         "--target-latency must be a positive number"),
    case("mask {ys} --ratios-from {sens_y} --target-params 0.5 --structured -o {out}/x.st",
         "was measured at weight granularity, not filter"),
    case("mask {ys} --ratios-from {sens_y} --target-macs 0.5 --metric adv_map -o {out}/x.st",
         "has no 'adv_map' values"),
    # --- sensitivity --------------------------------------------------------------------------
    case("sensitivity {ys} --data {val} --ratios 0,0.5 -o {out}/s.csv",
         "--ratios must lie in (0, 1) (the fraction removed), got 0.0"),
    case("sensitivity {ys} --data {val} --ratios 0.5,1 -o {out}/s.csv",
         "--ratios must lie in (0, 1) (the fraction removed), got 1.0"),
    case("sensitivity {ds} --data {val} --ratios 0.5,nan -o {out}/s.csv", "got nan"),
    case("sensitivity {ys} --data {val} --ratios half -o {out}/s.csv",
         "is not a comma-separated list of numbers"),
    case("sensitivity {y} --data {val} -o {out}/s.csv", "has no scores; run `prunekit score`"),
    case("sensitivity {ds} --data {val} --granularity channel -o {out}/s.csv",
         "--granularity 'channel' is unknown"),
    case("sensitivity {ys} --data {val} --group nope -o {out}/s.csv",
         "--group 'nope' is not a group of"),
    case("sensitivity {ys} --data {val} --jobs 0 -o {out}/s.csv", "--jobs must be at least 1"),
    case("sensitivity {ys} --data {val} --adv cw -o {out}/s.csv", "--adv 'cw' is unknown"),
    case("sensitivity {ys} --data {val} --loss obj -o {out}/s.csv",
         "--loss has no effect without --adv pgd or fgsm; leave it out"),
    case("sensitivity {ys} --data {val} --adv pgd --eps 2 -o {out}/s.csv",
         "--eps must lie in (0, 1]"),
    case("sensitivity {ys} --data {val} --max-images 0 -o {out}/s.csv",
         "--max-images must be at least 1, got 0"),
    case("sensitivity {ys} --data {text} -o {out}/s.csv", "is not valid JSON"),
    case("sensitivity {ys} --data {val} -o {out}/no/s.csv", "does not exist; create it first"),
    case("sensitivity {ys} --data {val} -o {out}", "is a directory; give a file name"),
    case("sensitivity {ys} --data {val} -o {sens_d}", "was measured with another model"),
    case("sensitivity {ys} -o {out}/s.csv", "Missing option '--data'", code=2),
    # --- attack -------------------------------------------------------------------------------
    case("attack {y} --data {val} --method cw -o {out}/adv", "--method 'cw' is unknown"),
    case("attack {y} --data {val} --loss style -o {out}/adv", "--loss 'style' is unknown"),
    case("attack {y} --data {val} --eps 0 -o {out}/adv", "--eps must lie in (0, 1]"),
    case("attack {d} --data {val} --steps 0 -o {out}/adv", "--steps must be at least 1"),
    case("attack {y} --data {val} --alpha -0.1 -o {out}/adv", "--alpha must lie in (0, 1]"),
    case("attack {y} --data {val} --batch-size 0 -o {out}/adv",
         "--batch-size must be at least 1, got 0"),
    case("attack {y} --data {val} --device tpu -o {out}/adv", "--device 'tpu' is unknown"),
    case("attack {y} --data {val} -o {synth}", "exists; remove it or choose another folder"),
    case("attack {y} --data {val_escape} -o {out}/adv", "escapes the image root"),
    # --- detect -------------------------------------------------------------------------------
    case("detect {y} --data {val} --conf 1.5 -o {out}/d.csv", "--conf must lie in [0, 1)"),
    case("detect {d} --data {val} --iou 2 -o {out}/d.csv", "--iou must lie in (0, 1]"),
    case("detect {y} --data {val} --max-det 0 -o {out}/d.csv", "--max-det must be at least 1"),
    case("detect {y} --data {val} --batch-size 0 -o {out}/d.csv",
         "--batch-size must be at least 1, got 0"),
    case("detect {y} --data {val} --attack pgd --eps -1 -o {out}/d.csv",
         "--eps must lie in (0, 1]"),
    case("detect {y} --data {val} --eps 0.1 -o {out}/d.csv", "--eps has no effect "
         "without --attack pgd or fgsm; leave it out"),
    case("detect {y} --data {val} --steps 3 --loss obj -o {out}/d.csv", "--steps, --loss have "
         "no effect without --attack pgd or fgsm; leave them out"),
    case("detect {y} --data {val} --attack cw -o {out}/d.csv",
         "--attack 'cw' is unknown; use pgd or fgsm"),
    case("detect {y} -o {out}/d.csv", "what to detect on?"),
    case("detect {y} --images {emptydir} -o {out}/d.csv", "holds no images"),
    case("detect {y} --images {out}/nothere -o {out}/d.csv", "is not a folder of images"),
    case("detect {y} --data {val_escape} -o {out}/d.csv", "escapes the image root"),
    case("detect {d} --data {kitti_val} -o {out}/d.csv", "are not among the model's classes"),
    case("detect {y} --data {val} -o {out}", "is a directory; give a file name"),
    case("detect {y} --data {val} -o {out}/no/d.csv", "does not exist; create it first"),
    case("detect {y} --data {val} --workers -2 -o {out}/d.csv", "--workers must be at least 0"),
    # --- evaluate -----------------------------------------------------------------------------
    case("evaluate {dets_nan} --gt {val} -o {out}/m.json", "x is 'nan'; expected a finite number"),
    case("evaluate {dets_negw} --gt {val} -o {out}/m.json", "expected a width ≥ 0"),
    case("evaluate {dets_cls} --gt {val} -o {out}/m.json", "category_id 99 is not a category"),
    case("evaluate {dets_id} --gt {val} -o {out}/m.json", "image_id 123456 is not an image"),
    case("evaluate {dets} --gt {train} -o {out}/m.json", "is not an image in"),
    case("evaluate {dets_cols} --gt {val} -o {out}/m.json", "has no 'x' column"),
    case("evaluate {dets_empty} --gt {val} -o {out}/m.json", "is empty; a detections CSV"),
    case("evaluate {y} --gt {val} -o {out}/m.json", "is not UTF-8 text"),
    case("evaluate {dets} --gt {val} --difficulty extreme -o {out}/m.json",
         "difficulty 'extreme' is not a KITTI level"),
    case("evaluate {dets} --gt {val} --difficulty moderate -o {out}/m.json",
         "has no 'difficulty'"),
    case("evaluate {dets} --gt {out}/none.json -o {out}/m.json", "does not exist"),
    case("evaluate {dets} --gt {val} -o {out}", "is a directory; give a file name"),
    case("evaluate {dets} --gt {val} --format xml -o {out}/m.json",
         "Invalid value for '--format'", code=2),
    # --- bench --------------------------------------------------------------------------------
    case("bench {text}", "is truncated or not safetensors"),
    # --- history ------------------------------------------------------------------------------
    case("history {text}", "is truncated or not safetensors"),
    case("bench {y} --batch 0 --no-latency", "--batch must be at least 1, got 0"),
    case("bench {y} --threads 0 --no-latency", "--threads must be at least 1, got 0"),
    case("bench {y} --threads 4096", "--threads 4096 is more than the"),
    case("bench {yq} --threads 4096", "CPUs this process may run on"),
    case("bench {y} --min-time 0", "--min-time must be more than 0 seconds of timed runs, got "
         "0; 2 is the default"),
    case("bench {yq} --min-time -1", "--min-time must be more than 0 seconds"),
    case("attack {y} --data {val} --method none -o {out}/adv", "--method none writes no "
         "attacked images; use pgd or fgsm"),
    case("detect {y} --data {val} --attack fgsm --alpha 0.01 -o {out}/d.csv", "--alpha has no "
         "effect with --attack fgsm (PGD's settings: FGSM takes one step of --eps); leave it out"),
    case("finetune {y} --data {val} --steps 1 --adv fgsm --attack-steps 3 -o {out}/f.st",
         "--attack-steps has no effect with --adv fgsm"),
    case("grid cell {ys} {out}/cell --scenario s --run 1 --ratio 0.5 --data {val} --val {val} "
         "--bench-seconds 0", "--bench-seconds must be more than 0 seconds of timed runs, got 0"),
    case("bench {y} --no-latency --min-time 5", "--min-time has no effect with --no-latency "
         "(nothing is timed); leave it out"),
    case("bench {y} --device tpu --no-latency", "--device 'tpu' is unknown"),
    case("bench {y} --runtime tensorrt --no-latency", "--runtime 'tensorrt' is unknown"),
    case("bench {dc} --runtime onednn-graph --no-latency",
         "--runtime onednn-graph cannot run this model"),
    # --- export -------------------------------------------------------------------------------
    case("export {y} --hf {out}/hf", "exports to ONNX only; --hf is another family's format"),
    case("export {d}", "which format? give -o FILE.onnx (ONNX) or one of the model families' "
                       "own formats (--hf (deformable-detr)"),
    case("export {d} -o {out}/d.onnx --hf {out}/hf", "which format? give -o FILE.onnx"),
    case("export {ys} -o {out}/y.onnx", "holds importance scores but no masks"),
    case("export {y} -o {out}/y.onnx --opset 11", "--opset 11 is not supported"),
    case("export {d} -o {out}/d.onnx --opset 99", "--opset 99 is not supported"),
    case("export {y} -o {out}/none/y.onnx", "folder {out}/none does not exist"),
    case("export {y} -o {out}", "is a directory; give a file name"),
    case("export {y} -o {out}/y.onnx --batch 0", "--batch must be 'dynamic' or a whole number"),
    case("export {y} -o {out}/y.onnx --batch two", "--batch must be 'dynamic' or a whole"),
    case("export {text} -o {out}/y.onnx", "is truncated or not safetensors"),
    case("export {pickle} --hf {out}/hf", "is a pickle / torch.save file"),
    case("export {dc} --hf {out}/hf", "this model is compacted"),
    case("export {d} --hf {synth}", "exists; remove it or choose another folder"),
    case("mask {ys} --ratio 0.5 --metric adv_map -o {out}/m.st", "--metric has no effect "
         "without --ratios-from (the sensitivity CSV it reads); leave it out"),
    case("mask {ys} --ratio 0.5 --runtime eager -o {out}/m.st", "--runtime has no effect "
         "without --target-latency; leave it out"),
    case("export {d} --hf {out}/hf --opset 19", "--opset has no effect with --hf (ONNX export "
         "settings); leave it out"),
    case("export {d} --hf {out}/hf --int8 --data {val}", "--int8, --data have no effect with "
         "--hf (ONNX export settings); leave them out"),
    case("export {d} --hf {out}/hf --batch dynamic", "--batch has no effect with --hf (ONNX "
         "export settings); leave it out"),
    case("export {d} --hf {out}/hf --no-verify --seed 0", "--no-verify, --seed have no effect "
         "with --hf"),
    # --- export --int8 and the exported file as a model (issue 27) ------------------------------
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib 0",
         "--calib must be at least 1"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib -3",
         "--calib must be at least 1"),
    case("export {y} -o {out}/q.onnx --int8 --data {kitti_val} --calib 2",
         "holds classes the model does not detect (Car, Pedestrian, Cyclist"),
    case("export {y} -o {out}/q.onnx --int8", "--int8 calibrates on images: give --data"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib 100",
         "--calib 100 is more than the 8 images of"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib 8",
         "is left to check the INT8 model on; lower --calib or give --val"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib-method kl",
         "--calib-method 'kl' is unknown; use minmax, entropy, percentile"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --decode", "leave out --decode"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --calib 2 --weight-bits 4",
         "--weight-bits 4 is not offered; use 7 (every CPU) or 8 (CPUs with VNNI)"),
    case("export {y} -o {out}/q.onnx --weight-bits 8", "--weight-bits has no effect "
         "without --int8 (INT8 settings); leave it out"),
    case("export {y} -o {out}/q.onnx --data {val}", "--data has no effect without "
         "--int8 (INT8 settings); leave it out"),
    case("export {y} -o {out}/q.onnx --calib 5 --calib-method entropy", "--calib, "
         "--calib-method have no effect without --int8 (INT8 settings); leave them out"),
    case("export {y} -o {out}/q.onnx --int8 --data {val} --no-verify", "--int8 always checks "
         "what it writes (the float graph against PyTorch, the INT8 one against the float "
         "graph); leave out --no-verify"),
    case("detect {foreign_onnx} --data {val} -o {out}/d.csv",
         "without prunekit's metadata (family, classes, input pipeline): prunekit did not "
         "write it"),
    case("bench {foreign_onnx} --no-latency", "prunekit did not write it"),
    case("detect {old_onnx} --data {val} -o {out}/d.csv", "before files described their model"),
    case("detect {bad_onnx} --data {val} -o {out}/d.csv", "is not an ONNX model"),
    case("detect {yo_decoded} --data {val} -o {out}/d.csv", "was exported with --decode"),
    case("detect {yo} --data {val} --attack pgd -o {out}/d.csv",
         "gradients do not run through an ONNX file"),
    case("bench {yq} --runtime onednn-graph --no-latency",
         "is an INT8 model (QDQ): --runtime onednn-graph runs float PyTorch models"),
    case("bench {yq} --runtime eager --no-latency", "has no INT8 kernels for it"),
    case("bench {yo} --runtime eager --no-latency", "runs PyTorch checkpoints; use --runtime "
                                                    "onnxruntime"),
    case("bench {yo_decoded} --batch 1 --no-latency", "fixed batch of 2; bench it with --batch 2"),
    case("attack {yo} --data {val} -o {out}/adv", "is an ONNX file, not a prunekit checkpoint: "
         "this command reads checkpoints; give the checkpoint it was exported from"),
    case("mask {yq} --ratio 0.5 -o {out}/m.st", "is an ONNX file, not a prunekit checkpoint"),
    case("export {yo} -o {out}/again.onnx", "is an ONNX file, not a prunekit checkpoint"),
    # --- grid ---------------------------------------------------------------------------------
    case("grid subset {val} {out}/sub.json", "must be in the same folder as"),
    case("grid subset {out}/none.json {out}/sub.json", "does not exist"),
    case("grid subset {text} {out}/sub.json", "is not valid JSON"),
    case("grid subset {out}/val.json {out}/sub.json --images 0",
         "--images must be at least 1, got 0"),
    case("grid collect {emptydir} -o {out}/r.csv", "no cell results under"),
    case("grid collect {out}/nowhere -o {out}/r.csv", "nowhere does not exist; give the grid's "
         "folder"),
    case("grid collect {y} -o {out}/r.csv", "is a file; give the grid's folder"),
    case("grid collect {gridroot} -o {out}/r.csv", "is not valid JSON"),
    case("grid collect {gridbad} -o {out}/r.csv", "has no scenario, run, ratio: it is not a cell"),
    case("grid collect {gridroot} -o {out}", "is a directory; give a file name"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 1.5 "
         "--data {train} --val {val}", "--ratio must lie in [0, 1)"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--adv cw --data {train} --val {val}", "--adv 'cw' is unknown"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--threads 4096 --data {train} --val {val}", "--threads 4096 is more than the"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--adv none --no-adv-eval --eps 0.1 --data {train} --val {val}",
         "--eps has no effect without --adv pgd or fgsm; leave it out"),
    case("grid cell {y} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--data {train} --val {val}", "has no scores for"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--threads 0 --data {train} --val {val}", "--threads must be at least 1, got 0"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--runtime tensorrt --data {train} --val {val}", "--runtime 'tensorrt' is unknown"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--scope model --data {train} --val {val}", "--scope 'model' is unknown"),
    # The scenario is a free label (the Makefile names cells); what is wrong is refused.
    case("grid cell {ys} {out}/cell --scenario a/b --run 1 --ratio 0.5 --data {train} "
         "--val {val}", "--scenario 'a/b' is not a usable name"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 0 --ratio 0.5 "
         "--data {train} --val {val}", "--run must be at least 1, got 0"),
    case("grid cell {ys} {out}/cell --scenario unstructured-magnitude --run 1 --ratio 0.5 "
         "--method foo --data {train} --val {val}", "--method 'foo' is unknown"),
    # --- stats --------------------------------------------------------------------------------
    case("stats {stats_cols} -o {out}/rep", "lacks column(s) ratio"),
    case("stats {dets} -o {out}/rep", "lacks column(s) scenario, run, ratio"),
    case("stats {out}/none.csv -o {out}/rep", "no such file"),
    case("stats {dets_empty} -o {out}/rep", "is empty; give a results CSV"),
    case("stats {y} -o {out}/rep", "is not a readable CSV"),
    case("stats {stats_cols} --std biased -o {out}/rep", "Invalid value for '--std'", code=2),
]


def _onnx_files(f: dict[str, Path], root: Path) -> None:
    """Exported files: float, decoded at batch 2, INT8, one without prunekit's metadata, one
    from before files described their model, and one that is not ONNX at all."""
    import onnx
    from onnx import TensorProto, helper

    from prunekit import checkpoint
    from prunekit.export import Int8Config, export_int8, export_onnx

    y = checkpoint.load(f["y"])
    for key, kw in {"yo": {}, "yo_decoded": {"batch": 2, "decoded": True}}.items():
        f[key] = root / f"{key}.onnx"
        export_onnx(y, f[key], **kw)
    f["yq"] = root / "yq.onnx"
    export_int8(y, f["yq"], Int8Config(data=str(f["val"]), calib=4,
                                       min_sqnr_db=float("-inf")))
    old = onnx.load(str(f["yo"]))
    kept = [p for p in old.metadata_props if p.key != "prunekit.model"]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    f["old_onnx"] = root / "old.onnx"
    onnx.save(old, str(f["old_onnx"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                  "g", [x], [y_out]))
    f["foreign_onnx"] = root / "foreign.onnx"
    onnx.save(foreign, str(f["foreign_onnx"]))
    f["bad_onnx"] = root / "bad.onnx"
    f["bad_onnx"].write_bytes(f["yo"].read_bytes()[:1000])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every file the table names, built once: datasets, checkpoints of both families, bad
    files, detections and results CSVs."""
    from prunekit import checkpoint
    from prunekit.data.kitti import convert
    from prunekit.data.synth import synth
    from prunekit.data.synth_kitti import synth_kitti
    from prunekit.init import init
    from prunekit.mask import PruneConfig, mask
    from prunekit.score import score

    root = tmp_path_factory.mktemp("bad-inputs")
    f: dict[str, Path] = {}
    f["synth"] = root / "synth"
    synth(f["synth"], train=16, val=8, size=64, seed=0)
    f["train"], f["val"] = f["synth"] / "train.json", f["synth"] / "val.json"
    f["ks"], f["kc"] = root / "ks", root / "kc"
    synth_kitti(f["ks"], images=6, width=128, height=64, seed=0)
    convert(f["ks"], f["kc"], classes=["Car", "Pedestrian", "Cyclist"], dontcare="drop",
            val_fraction=0.34, seed=0)
    f["kitti_train"], f["kitti_val"] = f["kc"] / "train.json", f["kc"] / "val.json"
    f["ks_bad"] = root / "ks-bad"
    (f["ks_bad"] / "label_2").mkdir(parents=True)
    shutil.copytree(f["ks"] / "image_2", f["ks_bad"] / "image_2")
    (f["ks_bad"] / "label_2" / "000000.txt").write_text("Car 0 0 0 10 10 5 5 1 1 1 0 0 0 0\n")

    names = [c["name"] for c in json.loads(f["val"].read_text())["categories"]]
    y = init("yolov3-small", names=names, img_size=64, options={"width": 0.125}, seed=0)
    d = init("deformable-detr-small", names=names, img_size=64, seed=0)
    ys, ds = score(y, "magnitude"), score(d, "magnitude")
    for key, ck in {"y": y, "d": d, "ys": ys, "ds": ds, "ym": mask(ys, PruneConfig(0.5)),
                    "dc": mask(ds, PruneConfig(0.5, granularity="filter", compact=True))}.items():
        f[key] = root / f"{key}.st"
        checkpoint.save(ck, f[key])

    for key, ck in {"sens_y": ys, "sens_d": ds}.items():
        f[key] = root / f"{key}.csv"
        _sensitivity_csv(ck, f[key])
    f["sens_bad"] = root / "sens_bad.csv"
    f["sens_bad"].write_text(_with_ratio(f["sens_y"], 1.5))

    _onnx_files(f, root)

    f["empty"] = root / "empty.st"
    f["empty"].write_bytes(b"")
    f["trunc"] = root / "trunc.st"
    f["trunc"].write_bytes(f["y"].read_bytes()[:100])
    f["text"] = root / "text.st"
    f["text"].write_text("hello world\n")
    f["pickle"] = root / "pickle.st"
    f["pickle"].write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    f["hfempty"] = root / "hf-empty"
    f["hfempty"].mkdir()
    f["emptydir"] = root / "empty-dir"
    f["emptydir"].mkdir()

    val = json.loads(f["val"].read_text())
    for key, change in {
        "val_escape": lambda v: v["images"][0].update(file_name="../../etc/passwd"),
        "val_abs": lambda v: v["images"][0].update(file_name="/etc/passwd"),
        "val_missing": lambda v: v["images"][0].update(file_name="images/missing.png"),
        "val_cls": lambda v: v["annotations"][0].update(category_id=42),
        "val_noimg": lambda v: v.update(images=[], annotations=[]),
        "val_nanbox": lambda v: v["annotations"][0].update(bbox=[1, 2, float("nan"), 3]),
        "val_negbox": lambda v: v["annotations"][0].update(bbox=[1, 2, -4, 3]),
    }.items():
        bad = json.loads(json.dumps(val))
        change(bad)
        f[key] = f["synth"] / f"{key}.json"  # beside the images: the same image root
        f[key].write_text(json.dumps(bad))

    header = ["image_id", "file_name", "category_id", "category", "score", "x", "y", "w", "h"]
    rows = [[im["id"], im["file_name"], 1, names[0], 0.9, 4, 4, 20, 20] for im in val["images"]]

    def dets(key: str, change=None, columns=header) -> None:
        bad = [list(r) for r in rows]
        if change:
            change(bad[0])
        f[key] = root / f"{key}.csv"
        with f[key].open("w", newline="") as out:
            w = csv.writer(out)
            w.writerow(columns)
            w.writerows([r[:len(columns)] for r in bad])

    dets("dets")
    dets("dets_nan", lambda r: r.__setitem__(5, "nan"))
    dets("dets_negw", lambda r: r.__setitem__(7, -5))
    dets("dets_cls", lambda r: r.__setitem__(2, 99))
    dets("dets_id", lambda r: r.__setitem__(0, 123456))
    dets("dets_cols", columns=header[:5])
    f["dets_empty"] = root / "dets_empty.csv"
    f["dets_empty"].write_text("")
    f["stats_cols"] = root / "stats_cols.csv"
    f["stats_cols"].write_text("scenario,run\na,1\n")

    f["gridroot"] = root / "grid"
    (f["gridroot"] / "s" / "run1" / "r0.5").mkdir(parents=True)
    (f["gridroot"] / "s" / "run1" / "r0.5" / "result.json").write_text('{"map": 1')
    f["gridbad"] = root / "grid-bad"
    (f["gridbad"] / "s" / "run1" / "r0.5").mkdir(parents=True)
    (f["gridbad"] / "s" / "run1" / "r0.5" / "result.json").write_text('{"map": 0.5}')
    return {k: str(v) for k, v in f.items()}


def _sensitivity_csv(ck, path: Path) -> None:
    """A sensitivity CSV of ``ck`` (weight groups at 0.5 and 0.9) with made-up mAPs."""
    from prunekit import sensitivity as sens

    labels = sens.labels(ck, "weight")
    rows = [{"group": sens.UNPRUNED, "members": "", "ratio": 0.0, "map": 0.5}]
    rows += [{"group": g, "members": g, "ratio": r, "map": 0.5 - r * (k % 3 + 1) / 10}
             for k, g in enumerate(labels) for r in (0.5, 0.9)]
    gt = {"images": [], "annotations": [], "categories": []}
    sens.write(sens.table(rows, labels, sens.settings(ck, gt, sens.SensitivityConfig())), path)


def _with_ratio(path: Path, ratio: float) -> str:
    """The CSV at ``path`` with its first group row's ratio changed."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    frame.loc[1, "ratio"] = ratio
    return frame.to_csv(index=False)


def _argv(argv: list[str], files: dict[str, str], out: Path) -> list[str]:
    args = []
    for a in argv:
        args += SMALL if a == "@" else [a.format(out=out, **files)]
    return args


def _check(code: int, stderr: str, expected_code: int, fragment: str, out: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert code == expected_code, stderr
    if expected_code == 2:  # click's usage error: Usage:, Try ..., then the error line
        assert fragment in lines[-1], lines
    else:
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ") and fragment in lines[0], lines
    # No file written (an empty folder may stay: `grid cell` makes the cell's folder first).
    written = [p for p in out.rglob("*") if p.is_file() and p != out / "val.json"]
    assert not written, written


@pytest.mark.parametrize(("argv", "fragment", "code"), CASES)
def test_bad_input(runner, files, tmp_path, argv, fragment, code):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(files["val"], out / "val.json")  # for `grid subset`, whose output sits beside
    args = _argv(argv, files, out)
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    _check(result.exit_code, result.stderr, code, fragment.format(out=out), out)


def test_the_table_covers_every_command():
    from tests.test_cli import _commands

    covered = {" ".join(p.values[0][:2]) for p in CASES} | {p.values[0][0] for p in CASES}
    assert len(CASES) >= 60
    for command in _commands():
        assert " ".join(command) in covered, command


# ------------------------------------------------------------------------- end to end (subprocess)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list[str], *, stdin=None, stdout=subprocess.PIPE) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=ROOT, env=ENV,
                          stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)
    return done.returncode, done.stderr


@pytest.mark.parametrize(("argv", "fragment"), [
    ("mask {ys} --ratio 1.0 -o {out}/x.st", "--ratio must lie in [0, 1)"),
    ("evaluate {dets} --gt {train} -o {out}/m.json", "is not an image in"),
    ("finetune {y} --data {val_missing} --steps 1 --workers 1 @ -o {out}/x.st",
     "images/missing.png does not exist"),
], ids=["mask-ratio", "evaluate-ids", "finetune-worker-error"])
def test_end_to_end(files, tmp_path, argv, fragment):
    code, stderr = _run(_argv(argv.split(), files, tmp_path))
    _check(code, stderr, 1, fragment, tmp_path)


def test_end_to_end_stdin_a_terminal(files, tmp_path):
    leader, follower = pty.openpty()
    try:
        code, stderr = _run(["bench", "--no-latency"], stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    _check(code, stderr, 1, "no checkpoint given and stdin is a terminal", tmp_path)


def test_end_to_end_stdout_a_terminal(files, tmp_path):
    leader, follower = pty.openpty()
    try:
        code, stderr = _run(["init", "yolov3-small", "--classes", "3", "--img-size", "64",
                             "--width", "0.125"], stdout=follower)
    finally:
        os.close(leader)
        os.close(follower)
    _check(code, stderr, 1, "refusing to write a checkpoint to a terminal", tmp_path)
