"""What the test modules share: paths, tiny models, reference helpers, and the two ways of running a
command-line script, in this process (`run_cli`, for what a test checks of the command's behaviour) or
as a user does, in a Python process of its own (`run_script`, `start`/`finish`, `accelerate_launch`:
kept for one end-to-end run per command and for what needs several processes or a SIGKILL).

Test modules import from here (or take conftest's fixtures), never from each other."""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# A command's own process: one thread, as the tests' tiny models run fastest (and two threads spin
# when another job holds the cores).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# -- models and references --------------------------------------------------------------------------
def tiny_unet(**overrides):
    """A random 8x8 UNet2DModel small enough to run in milliseconds."""
    from diffusers import UNet2DModel

    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                  norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DModel(**config).eval()


class LatentRecorder:
    """Wraps a pipeline's `prepare_latents` to keep the latents its loop starts from (the first part of a
    tuple: img2img's and inpainting's return more)."""

    def __init__(self, pipe):
        self.prepare, self.latents = pipe.prepare_latents, None
        pipe.prepare_latents = self

    def __call__(self, *args, **kwargs):
        out = self.prepare(*args, **kwargs)
        self.latents = out[0] if isinstance(out, tuple) else out
        return out


# The noise table of diffusers' DDPM (test_diffusers_parity, test_schedulers, test_drop_in, test_amed).
TABLE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _noise_like_unet_class():
    from diffusers import UNet2DModel
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class NoiseLikeUNet(UNet2DModel):
        """A random UNet plus its input: it predicts roughly the noise of data near 0, so samples stay
        in the picture range and the pipeline's final clamp does not hide differences."""

        def forward(self, sample, timestep, **kwargs):
            return UNet2DOutput(sample=sample + 0.1 * super().forward(sample, timestep).sample)

    return NoiseLikeUNet


NoiseLikeUNet = _noise_like_unet_class()


def fewstep(name="ddim", **config):
    """FewstepScheduler on diffusers' DDPM table, without clipping."""
    from diffusers import DDPMScheduler

    from fewstep.pipelines import FewstepScheduler

    return FewstepScheduler.from_config(DDPMScheduler(**TABLE, clip_sample=False).config, sampler=name, **config)


def reference(denoiser, name, grid, shape, seed, **options):
    """`samplers.sample` from the noise a pipeline draws first, scaled to diffusers' unit-variance
    start (docs/conventions.md §2), with the rest of the seed's stream left for the sampler."""
    from diffusers.utils.torch_utils import randn_tensor

    from fewstep import samplers

    generator = torch.Generator().manual_seed(seed)
    noise_vp = randn_tensor(shape, generator=generator)
    s0 = float(grid[0])
    return samplers.sample(name, denoiser, noise_vp * math.sqrt(1 + s0 ** 2) / s0, grid, generator=generator, **options)


def assert_same_images(ours, theirs):
    """Equal to 1e-5, with enough pixels inside (0, 1) that the final clamp hides nothing."""
    assert ((theirs > 0) & (theirs < 1)).float().mean() > 0.2
    assert (ours - theirs).abs().max() < 1e-5


def range_gap(a, b) -> float:
    """The largest difference of `a` from `b`, relative to `b`'s range (images, latents)."""
    return float((a - b).abs().max() / (b.max() - b.min()))


def norm_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """`|a - b| / |b|` in float64 (a weight tensor against another run's)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def logged_losses(run_dir) -> list[float]:
    """The `loss` column of a training run's `loss.csv`."""
    import csv

    with open(Path(run_dir) / "loss.csv", newline="") as rows:
        return [float(row["loss"]) for row in csv.DictReader(rows)]


# The step counts of the order measurements against the exact solution (test_solvers, test_amed).
STEPS = [16, 32, 64]


def mixture_problem():
    """The mixture, 256 float64 noises and their exact ODE solution (dopri5 at 1e-10): conftest's `problem`."""
    from fewstep import samplers

    gmm = samplers.GMMDenoiser(means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], stds=[0.3, 0.5, 0.2],
                               weights=[0.3, 0.5, 0.2])
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max)
    exact = samplers.sample("dopri5", gmm, noise, sigmas, rtol=1e-10, atol=1e-10)
    return gmm, noise, exact


# max |ours - diffusers| / max(1, max |x|) over every evaluated state and the result. Measured:
# 2e-7 to 9e-6, and 2.5e-5 for DPM-Solver at 4 steps on the exponential grid: diffusers keeps the
# sample and the network output in float32, and its epsilon -> x0 conversion at sigma = 157
# multiplies their rounding by sigma (with its tables widened to float64, Heun agrees to 1e-14 and
# the others to 1e-6). The algorithmic faults tried against this file move it by 1e-3 or more.
TOLERANCE = 1e-4


def mixture(zero_mean=False):
    """Three unequal 2-D Gaussians. `zero_mean` reweights them so the mixture's mean is 0."""
    from fewstep import samplers

    weights = [3, 3, 1] if zero_mean else [0.3, 0.5, 0.2]  # [3, 3, 1]: -2*3 + 2*3 + 0 = 0, 0 + 3 - 3 = 0
    return samplers.GMMDenoiser(means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], stds=[0.3, 0.5, 0.2],
                                weights=weights)


def standard_noise(seed=0, n=64):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def make_trainer(out_dir, steps, objective=None, data=None, checkpoint_every=20):
    """The tiny UNet on 8x8 digits with the diffusion objective (test_training, test_engine_processes)."""
    from fewstep.flows import DiffusionObjective
    from fewstep.training import Trainer
    from fewstep.training.data import digits

    return Trainer(tiny_unet(), objective or DiffusionObjective(), digits(image_size=8) if data is None else data,
                   out_dir=out_dir, steps=steps, batch_size=32, lr=2e-3, warmup_steps=5,
                   checkpoint_every=checkpoint_every, log_every=10, ema_decay=0.9, cpu=True)


WORKER = str(ROOT / "tests" / "train_worker.py")


def in_process(out, steps, every, *kind):
    """train_worker's run in this process (its own Accelerator, then accelerate's state forgotten): the
    uninterrupted runs and the resumes of the SIGKILL tests, whose victims are processes of their own,
    and the one-process runs of the two-process comparison. One thread, as the processes of their own
    (ENV): the same arithmetic, and no threads spinning on a busy machine."""
    import train_worker

    threads = torch.get_num_threads()
    reset_accelerate()
    torch.set_num_threads(1)
    try:
        train_worker.main(Path(out), int(steps), int(every), *kind)
    finally:
        torch.set_num_threads(threads)
        reset_accelerate()


# -- the command line in this process ---------------------------------------------------------------
def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so that the next Accelerator is made afresh."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    GradientState._reset_state()


def run_cli(script: str, *overrides, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python scripts/<script> <overrides>` run in this process: the script's Hydra `main` with
    `sys.argv` set as the command line sets it, its stdout and stderr captured, its exit code taken
    from `SystemExit` (0 when it returns; 2 for the one-line errors; 1 when Hydra reports a failure).
    Hydra's and accelerate's process-wide state is cleared before and after, and what the run changes
    of this process (logging, the random generators, torch's threads, the working directory) is put
    back. Returns a CompletedProcess as `subprocess.run(..., capture_output=True, text=True)` would,
    with `seconds`, the run's duration."""
    from hydra.core.global_hydra import GlobalHydra

    path = ROOT / "scripts" / script
    module = importlib.import_module(f"fewstep.scripts.{path.stem}")
    argv = [str(path), *map(str, overrides)]
    out, err = io.StringIO(), io.StringIO()
    # the loggers conf/hydra/job_logging/fewstep.yaml sets: the root and accelerate's (to the log file alone)
    saved_logging = [(logger, logger.handlers[:], logger.level, logger.propagate)
                     for logger in (logging.getLogger(), logging.getLogger("accelerate"))]
    saved_rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    threads, saved_argv, saved_cwd = torch.get_num_threads(), sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    reset_accelerate()
    start = time.perf_counter()
    try:
        sys.argv = argv
        os.chdir(cwd)
        torch.set_num_threads(1)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                module.main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
        reset_accelerate()
        for logger, handlers, level, propagate in saved_logging:
            for handler in logger.handlers:  # Hydra's: the console (our buffers) and the job's log file
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
        torch.set_rng_state(saved_rng[0])
        np.random.set_state(saved_rng[1])
        random.setstate(saved_rng[2])
    done = subprocess.CompletedProcess([sys.executable, *argv], code, out.getvalue(), err.getvalue())
    done.seconds = time.perf_counter() - start
    return done


# -- the command line as a user runs it: other Python processes ------------------------------------
def accelerate_launch(processes: int) -> list[str]:
    """`accelerate launch` for CPU processes over gloo, on a free port (so runs never collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def script(name):
    return str(ROOT / "scripts" / name)


def command(name, *overrides, processes=1):
    """The command line of scripts/<name>: `python` for one process, `accelerate launch` for more."""
    launcher = [sys.executable] if processes == 1 else accelerate_launch(processes)
    return [*launcher, script(name), *map(str, overrides)]


def run_script(name, *overrides, launcher=(sys.executable,), env=None, cwd=ROOT, timeout=300):
    """`python scripts/<name> <overrides>` (or under `launcher`) in a process of its own, one thread."""
    start_ = time.perf_counter()
    done = subprocess.run([*launcher, script(name), *map(str, overrides)], cwd=cwd, env=ENV if env is None else env,
                          capture_output=True, text=True, timeout=timeout)
    done.seconds = time.perf_counter() - start_
    return done


def ok(done):
    """The run must have succeeded; on a failure, its command line and the end of its output."""
    seconds = f" ({done.seconds:.1f} s)" if hasattr(done, "seconds") else ""
    assert done.returncode == 0, f"{' '.join(map(str, done.args))}{seconds}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def the_error(done):
    """The one `error:` line of a refused command (exit code 2, no traceback)."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


def start(cmd, logs):
    """Start a run in a session of its own, its stdout and stderr going to `logs`.out and `logs`.err
    (files, not pipes: nothing has to read them while it runs)."""
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=err, text=True, start_new_session=True)
    proc.logs = logs
    return proc


def output(proc):
    return subprocess.CompletedProcess(proc.args, proc.returncode, open(f"{proc.logs}.out").read(),
                                       open(f"{proc.logs}.err").read())


def finish(proc, timeout=150):
    """Wait for a run `start` began; its CompletedProcess (the run must succeed)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    return ok(output(proc))


def kill_tree(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and every worker: torch's elastic agent starts each worker
    in a session of its own, so killing the launcher's group alone would leave them training."""
    import psutil

    try:
        victims = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        victims = []
    for child in victims:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # a worker leads its own group; otherwise the launcher's
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    launcher.wait(timeout=30)
    _, alive = psutil.wait_procs(victims, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"


def stop(*procs):
    """SIGKILL those of the runs `start` began that are still running."""
    for proc in procs:
        if proc.poll() is None:
            kill_tree(proc)


# -- ReFlow pairs of a 2-D flow (test_reflow_cli, test_reflow_multiprocess, test_reflow_multiprocess_resume) --
# 1200 pairs in 5 shards (the last of 176): under two processes, process 0 makes shards 0, 2, 4 and process 1 shards 1, 3
REFLOW_PAIRS = ["model=mlp2d", "sampler=euler", "steps=20", "num_pairs=1200", "shard_size=256", "batch_size=128",
                "device=cpu"]


def flow_at(path, seed):
    """A tiny untrained 2-D flow saved at `path` (its weights from `seed`), for model=mlp2d model.path=PATH."""
    from fewstep.flows import MLPVelocity
    from fewstep.flows.velocity import save_flow

    torch.manual_seed(seed)
    save_flow(MLPVelocity(hidden=8, depth=1), path, 1000.0)
