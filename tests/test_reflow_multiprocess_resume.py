"""A ReFlow round trained in two processes (`accelerate launch --multi_gpu --num_processes 2`, on the CPU
over gloo), killed with SIGKILL after a checkpoint and started again, ends where one process's
uninterrupted round does (test_training.py checks the bit-exact resume of one process). Its pairs are
written in this process: test_reflow_multiprocess.py shows that two processes write the same."""
import json
import re
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from helpers import ENV, REFLOW_PAIRS, ROOT, command, logged_losses, norm_gap, ok, output, run_cli, start, stop

TRAIN = ["objective=rectified_flow", "net=mlp2d", "train.warmup_steps=0", "train.ema_decay=0.99", "train.cpu=true"]

# the reflow round: STEPS steps, a checkpoint every EVERY, a loss row every LOG; killed once it has
# checkpointed step EVERY and logged step KILL_AFTER (its fourth row)
STEPS, EVERY, LOG = 120, 30, 10
KILL_AFTER = EVERY + LOG
ROUND2 = [*TRAIN, "data=pairs", "train.batch_size=128", "train.lr=1e-3", f"train.steps={STEPS}",
          f"train.checkpoint_every={EVERY}", f"train.log_every={LOG}"]


def run(cmd, timeout=120):
    return ok(subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout))


def round2(tmp, out_dir):
    return [*ROUND2, f"data.root={tmp / 'pairs'}", f"init_from={tmp / 'round1' / 'model'}", f"out_dir={out_dir}"]


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A small 1-RF on moons and its pairs, in this process (helpers.run_cli); then the reflow round in
    two processes, `killed` with SIGKILL (the launcher and both workers) once it has checkpointed step
    EVERY and logged step KILL_AFTER, so that the resumed run has steps and a loss row to redo;
    meanwhile the uninterrupted round in this process (`straight`: one process trains the same,
    docs/conventions.md §8). Returns the run directory, the straight run and what the killed one had
    written (its output, checkpoints, whether it had finished, loss rows)."""
    tmp = tmp_path_factory.mktemp("reflow_resume")
    ok(run_cli("train.py", *TRAIN, "data=moons", "train.batch_size=256", "train.lr=3e-3", "train.steps=300",
               "train.checkpoint_every=300", "train.log_every=100", f"out_dir={tmp / 'round1'}"))
    ok(run_cli("reflow_pairs.py", *REFLOW_PAIRS, f"model.path={tmp / 'round1' / 'model'}", f"out_dir={tmp / 'pairs'}"))
    victim = start(command("train.py", *round2(tmp, tmp / "killed"), processes=2), tmp / "killed")
    checkpoint, log = tmp / "killed" / "checkpoints" / f"step_{EVERY:08d}", tmp / "killed" / "loss.csv"

    def past_the_checkpoint():  # the checkpoint of step EVERY and the loss row of step KILL_AFTER are written
        return checkpoint.exists() and log.exists() and f"\n{KILL_AFTER}," in log.read_text()

    try:
        straight = ok(run_cli("train.py", *round2(tmp, tmp / "straight")))
        deadline = time.monotonic() + 120
        while not past_the_checkpoint() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        stop(victim)
        said = output(victim)
        assert victim.returncode == -signal.SIGKILL, f"exit code {victim.returncode} before the kill\n{said.stderr[-3000:]}"
        killed = tmp / "killed"
        at_kill = {"said": said.stdout + said.stderr,
                   "checkpoints": sorted(p.name for p in (killed / "checkpoints").iterdir()) if checkpoint.exists()
                   else [], "finished": (killed / "train_summary.json").exists() or (killed / "model").exists(),
                   "logged": log.read_text().splitlines()[1:] if log.exists() else []}
        return tmp, straight, at_kill
    finally:
        stop(victim)


def test_a_two_process_round_killed_with_sigkill_resumes_to_the_uninterrupted_weights(rounds):
    """The resumed two-process round ends where one process's uninterrupted round ends: its loss rows
    and weights (the exported EMA and the raw ones) to 1e-5, as the process count allows (docs/conventions.md §8)."""
    tmp, straight, at_kill = rounds
    reference, killed = tmp / "straight", tmp / "killed"
    assert f"step_{EVERY:08d}" in at_kill["checkpoints"] and f"step_{STEPS:08d}" not in at_kill["checkpoints"], at_kill
    assert not at_kill["finished"], "the run finished before the kill"
    assert at_kill["logged"][3].startswith(f"{KILL_AFTER},"), at_kill  # steps after the checkpoint to redo
    assert "initialised the network from" in at_kill["said"] + straight.stdout + straight.stderr  # round 1's weights

    again = run(command("train.py", *round2(tmp, killed), processes=2))
    said = again.stdout + again.stderr
    resumed = re.findall(r"resumed from \S+step_(\d+) at step (\d+)", said)
    latest = int(at_kill["checkpoints"][-1][len("step_"):])
    assert resumed == [(f"{latest:08d}", str(latest))], (resumed, at_kill, said[-2000:])
    assert "initialised the network from" not in said  # the checkpoint, not init_from
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in (reference, killed)]
    assert [s["num_processes"] for s in summaries] == [1, 2]
    assert all(s["steps"] == STEPS and s["updates"] == {"net": STEPS} for s in summaries)

    logged = [logged_losses(d) for d in (reference, killed)]
    assert len(logged[1]) == STEPS // LOG and logged[1][-1] < 0.8 * logged[1][0], logged
    assert logged[1] == pytest.approx(logged[0], rel=1e-5)
    for weights in ("model/unet/diffusion_pytorch_model.safetensors",  # the exported EMA weights
                    f"checkpoints/step_{STEPS:08d}/model.safetensors"):  # the raw weights
        a, b = (load_file(str(d / weights)) for d in (reference, killed))
        assert a.keys() == b.keys() and a
        assert all(norm_gap(b[k], a[k]) <= 1e-5 for k in a), weights
