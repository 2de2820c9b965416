"""Fine-tuning learning-rate schedules compared from one shared fit per image and N.

For each image and N: one fit with the codec's OURS settings ($FIT_STEPS steps, default the CPU
default's 1,000), then the same fine-tuning (OURS quantizers, seed 0) with each (schedule,
learning rate) variant, each refined and encoded as the pipeline does. Adds one record per variant
to a :class:`gi_jax.experiment.ResultsFile` ($RECORDS, default records.json in this folder) and
skips those it has, so re-running resumes. A variant may name its own number of fine-tuning steps
(schedule:learning_rate:steps), so step counts compare from one fit too.

  .venv/bin/python results/ft_schedule_probe/probe.py kodim23 800,3000
"""
import json
import os
import sys
import time

from gi_jax import io, metrics
from gi_jax.codec import OURS, finetune
from gi_jax.experiment import ResultsFile

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = os.environ.get("RECORDS", os.path.join(HERE, "records.json"))
KODAK = os.environ.get("KODAK", "../shared/data/kodak")
FIT_STEPS = int(os.environ.get("FIT_STEPS", 1_000))
FINETUNE_STEPS = int(os.environ.get("FINETUNE_STEPS", 2_000))
# schedule:learning_rate[:steps], e.g. VARIANTS=paper:0.01,hold_cosine:0.02:4000
VARIANTS = [(name, float(lr), int(steps[0]) if steps else FINETUNE_STEPS) for name, lr, *steps in (
    v.split(":") for v in os.environ.get("VARIANTS", "paper:0.01,hold_cosine:0.02").split(","))]


def main(name, counts):
  image = io.load_image(os.path.join(KODAK, name + ".png"))
  results = ResultsFile(RECORDS)
  for n in counts:
    fitted = fit_psnr = fit_seconds = None
    for schedule, lr, finetune_steps in VARIANTS:
      key = dict(image=name, num_gaussians=n, steps=FIT_STEPS, finetune_steps=finetune_steps,
                 schedule=schedule, learning_rate=lr)
      if results.find(**key):
        continue
      if fitted is None:
        t0 = time.perf_counter()
        fitted = OURS.fit(image, n, FIT_STEPS)
        fit_seconds = time.perf_counter() - t0
        fit_psnr = float(metrics.psnr(fitted.render(), image))
      t0 = time.perf_counter()
      tuned = finetune(fitted, image, finetune_steps, config=OURS.quantizers, learning_rate=lr,
                       lr_schedule=schedule)
      seconds = time.perf_counter() - t0
      # Refinement measures both files (bits-back on, as OURS encodes).
      refined, refinement = OURS.refined(tuned, image, OURS.quantizers)
      record = dict(key, fit_psnr=fit_psnr, tuned_psnr=float(tuned.psnr),
                    best_step=int(tuned.best_step), tuned_bytes=refinement.initial_bytes,
                    psnr=float(refined.psnr), bytes=refinement.bytes, fit_seconds=fit_seconds,
                    finetune_seconds=seconds)
      print(json.dumps(record), flush=True)
      results.add(record)


if __name__ == "__main__":
  main(sys.argv[1], [int(n) for n in sys.argv[2].split(",")])
