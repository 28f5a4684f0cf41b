"""Wall time of FewstepScheduler against diffusers' own scheduler for the same sampler, at equal
NFE, inside a tiny random Stable-Diffusion pipeline (milliseconds per UNet call, so the
scheduler's own overhead shows). Runs alternate in one process; each time is the median over the
repetitions. Two ratios ours / diffusers' are given: the ratio of those medians (it agrees with the
time columns) and the median of the per-repetition ratios (paired runs, so a load change on a
shared machine cancels out). Writes a markdown table.

    python scripts/benchmark_schedulers.py benchmarks/schedulers.md [--steps 10] [--repeats 21]

The section lands in BENCHMARKS.md at the next `python scripts/benchmark.py --update-tracked` (or assemble it by hand).

Pairs: ddim / DDIMScheduler, euler / EulerDiscreteScheduler, heun / HeunDiscreteScheduler,
dpmpp_2m / DPMSolverMultistepScheduler (DPM-Solver++, order 2). "scheduler only" times, on Stable
Diffusion's table with a stand-in model output, every `scale_model_input` and `step` of one generation
per network evaluation at each latent size of `--sizes` (float32 latents), and `set_timesteps` (a new
step count every repetition, so no plan is reused).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from fewstep.evaluation.report import section
from fewstep.pipelines import FewstepScheduler
from fewstep.suites.tiny_pipelines import tiny_text_to_image

THEIRS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler,
          "dpmpp_2m": DPMSolverMultistepScheduler}


def time_pipeline(pipe, scheduler, steps: int, guidance_scale: float) -> float:
    pipe.scheduler = scheduler
    start = time.perf_counter()
    pipe("a cat", num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def time_scheduler(scheduler, steps: int, shape) -> tuple[float, float, int]:
    """Seconds per network evaluation of one generation's scheduler calls with a stand-in model
    output, seconds of its `set_timesteps`, and the NFE."""
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    output = 0.1 * sample
    start = time.perf_counter()
    scheduler.set_timesteps(steps)
    planned = time.perf_counter() - start
    start = time.perf_counter()
    for t in scheduler.timesteps:
        sample = scheduler.step(output, t, scheduler.scale_model_input(sample, t)).prev_sample
    return (time.perf_counter() - start) / len(scheduler.timesteps), planned, len(scheduler.timesteps)


def paired(runs: dict, name: str) -> tuple[float, float, float]:
    """Our median, diffusers' median and the median of the paired ratios of `runs[name, side]`."""
    ours, theirs = runs[name, 0], runs[name, 1]
    return (statistics.median(ours), statistics.median(theirs),
            statistics.median(a / b for a, b in zip(ours, theirs)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the markdown file to write")
    parser.add_argument("--steps", type=int, default=10, help="num_inference_steps for every scheduler")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs of each scheduler (median)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="> 1: classifier-free guidance")
    parser.add_argument("--sizes", default="1x4x8x8,2x4x64x64,1x4x128x128", help="latent shapes of the scheduler-only times")
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    torch.set_num_threads(1)  # the comparison is about per-step overhead; one thread is steadier on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_text_to_image(tmp)
    pairs = {name: (FewstepScheduler.from_config(pipe.scheduler.config, sampler=name), cls.from_config(pipe.scheduler.config))
             for name, cls in THEIRS.items()}
    times, nfe = defaultdict(dict), {}  # (what, size) -> (sampler, side) -> seconds per repetition
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, pair in pairs.items():
            for side in (0, 1) if rep % 2 else (1, 0):
                pipeline_time = time_pipeline(pipe, pair[side], args.steps, args.guidance_scale)
                for i, size in enumerate(sizes):  # a step count other than the last call's: a plan of its own
                    count = args.steps + 1 + (rep * len(sizes) + i) % 2
                    per_step, planned, nfe[name, side, count] = time_scheduler(pair[side], count, size)
                    if rep:
                        times["step", size].setdefault((name, side), []).append(per_step)
                        times["plan", size].setdefault((name, side), []).append(planned)
                if rep:
                    times["pipeline"].setdefault((name, side), []).append(pipeline_time)
    rows = ["| sampler | diffusers scheduler | NFE | ours ms | diffusers ms | ratio of the medians "
            "| median of paired ratios |", "|---" * 7 + "|"]
    steps_rows = ["| sampler | latents | ours µs/NFE | diffusers µs/NFE | paired ratio | ours set_timesteps µs "
                  "| diffusers set_timesteps µs | paired ratio |", "|---" * 8 + "|"]
    for name, (ours, theirs) in pairs.items():
        if any(nfe[name, 0, count] != nfe[name, 1, count] for *_, count in nfe):
            raise RuntimeError(f"{name}: NFE {nfe}; the comparison would be unfair")
        t0, t1, ratio = paired(times["pipeline"], name)
        ours.set_timesteps(args.steps)
        rows.append(f"| {name} | {type(theirs).__name__} | {len(ours.timesteps)} | {1e3 * t0:.2f} | {1e3 * t1:.2f} | "
                    f"{t0 / t1:.3f} | {ratio:.3f} |")
        for size in sizes:
            (s0, s1, sr), (p0, p1, pr) = paired(times["step", size], name), paired(times["plan", size], name)
            steps_rows.append(f"| {name} | {'x'.join(map(str, size))} | {1e6 * s0:.0f} | {1e6 * s1:.0f} | {sr:.2f} "
                              f"| {1e6 * p0:.0f} | {1e6 * p1:.0f} | {pr:.2f} |")
    note = (f"Tiny random StableDiffusionPipeline (8x8 latents, batch 1, guidance_scale {args.guidance_scale}, "
            f"output_type latent), {args.steps} steps, medians of {args.repeats} interleaved runs, "
            f"torch {torch.__version__}, 1 thread. Then the scheduler alone (Stable Diffusion's table, float32 latents).")
    text = section("FewstepScheduler against diffusers' own schedulers", "\n".join([note, "", *rows, "", *steps_rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
