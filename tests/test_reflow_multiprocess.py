"""A ReFlow round under `accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo): the pairs
written by two processes are those of one, and the next round, trained on them in two processes, killed
with SIGKILL after a checkpoint and started again, ends where one process's uninterrupted round does
(test_training.py checks the bit-exact resume of one process)."""
import json
import re
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import ENV, ROOT, command, finish, logged_losses, norm_gap, ok, output, run_cli, start, stop  # noqa: F401 (ENV)
from fewstep.flows import PairsDataset

TRAIN = ["objective=rectified_flow", "net=mlp2d", "train.warmup_steps=0", "train.ema_decay=0.99", "train.cpu=true"]
# 1200 pairs in 5 shards (the last of 176): process 0 makes shards 0, 2, 4 and process 1 shards 1, 3
PAIRS = ["model=mlp2d", "sampler=euler", "steps=20", "num_pairs=1200", "shard_size=256", "batch_size=128",
         "device=cpu"]
SHARDS = 5
# the reflow round: 240 steps, a checkpoint every 60, a loss row every 20
ROUND2 = [*TRAIN, "data=pairs", "train.batch_size=128", "train.lr=1e-3", "train.steps=240",
          "train.checkpoint_every=60", "train.log_every=20"]


def run(cmd, timeout=120):
    return ok(subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout))


# start, output, finish, kill_tree, stop: helpers.py


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A small 1-RF on moons (trained in this process, helpers.run_cli), and its pairs written by two
    processes (`accelerate launch`) and, at the same time, by one (this one)."""
    tmp = tmp_path_factory.mktemp("reflow_mp")
    ok(run_cli("train.py", *TRAIN, "data=moons", "train.batch_size=256", "train.lr=3e-3", "train.steps=300",
               "train.checkpoint_every=300", "train.log_every=100", f"out_dir={tmp / 'round1'}"))
    model = f"model.path={tmp / 'round1' / 'model'}"
    runs = [start(command("reflow_pairs.py", *PAIRS, model, f"out_dir={tmp / 'pairs2'}", processes=2), tmp / "pairs2")]
    try:
        one = ok(run_cli("reflow_pairs.py", *PAIRS, model, f"out_dir={tmp / 'pairs1'}"))
        (two,) = map(finish, runs)
    finally:
        stop(*runs)
    return tmp, one, two


def round2(tmp, out_dir):
    return [*ROUND2, f"data.root={tmp / 'pairs2'}", f"init_from={tmp / 'round1' / 'model'}", f"out_dir={out_dir}"]


@pytest.fixture(scope="module")
def rounds(pairs):
    """The reflow round in two processes, `killed` with SIGKILL (the launcher and both workers) once it
    has checkpointed step 60 and logged step 80, so that the resumed run has steps and a loss row to
    redo; meanwhile the uninterrupted round in this process (`straight`: one process trains the same,
    docs/conventions.md §8). Returns the straight run and what the killed one had written (its output,
    checkpoints, whether it had finished, loss rows)."""
    tmp = pairs[0]
    victim = start(command("train.py", *round2(tmp, tmp / "killed"), processes=2), tmp / "killed")
    checkpoint, log = tmp / "killed" / "checkpoints" / "step_00000060", tmp / "killed" / "loss.csv"

    def past_the_checkpoint():  # the checkpoint of step 60 and the loss row of step 80 are written
        return checkpoint.exists() and log.exists() and "\n80," in log.read_text()

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
        return straight, at_kill
    finally:
        stop(victim)


def test_two_processes_write_the_pairs_one_process_writes(pairs):
    tmp, one, two = pairs
    for done, out in [(one, "pairs1"), (two, "pairs2")]:
        assert done.stdout.count(f"wrote 1200 pairs to {tmp / out}") == 1, done.stdout  # process 0 alone says so
    # each process's bar counts the pairs of its own shards: process 0 made shards 0, 2 and 4 of the 5 under two
    # processes (256 + 256 + 176 pairs), all 1200 alone
    bars = [re.findall(r"pairs: 100%\|[^|]*\| (\d+)/(\d+)", done.stderr) for done in (one, two)]
    assert bars[0][-1:] == [("1200", "1200")] and bars[1][-1:] == [("688", "688")], (bars, two.stderr[-3000:])
    assert json.loads((tmp / "pairs1" / "pairs.json").read_text()) == json.loads(
        (tmp / "pairs2" / "pairs.json").read_text())
    sets = [PairsDataset(tmp / out, expect={"sampler": "euler", "shape": [2], "num_pairs": 1200, "shard_size": 256})
            for out in ("pairs1", "pairs2")]
    assert len(sets[0]) == len(sets[1]) == 1200
    assert sorted(p.name for p in (tmp / "pairs2").glob("shard_*")) == [f"shard_{k:05d}.safetensors"
                                                                        for k in range(SHARDS)]
    for k in range(SHARDS):
        a, b = (load_file(str(tmp / out / f"shard_{k:05d}.safetensors")) for out in ("pairs1", "pairs2"))
        assert a.keys() == b.keys() == {"noise", "sample", "seeds"}
        assert all(torch.equal(a[name], b[name]) for name in a), k
    samples = torch.stack([sets[1][i][0] for i in range(len(sets[1]))])
    noises = torch.stack([sets[1][i][1] for i in range(len(sets[1]))])
    assert not torch.equal(samples, noises) and samples.std(0).min() > 0.1  # real pairs, not a constant


def test_a_two_process_round_killed_with_sigkill_resumes_to_the_uninterrupted_weights(rounds, pairs):
    """The resumed two-process round ends where one process's uninterrupted round ends: its loss rows
    and weights (the exported EMA and the raw ones) to 1e-5, as the process count allows (docs/conventions.md §8)."""
    straight, at_kill = rounds
    tmp = pairs[0]
    reference, killed = tmp / "straight", tmp / "killed"
    assert "step_00000060" in at_kill["checkpoints"] and "step_00000240" not in at_kill["checkpoints"], at_kill
    assert not at_kill["finished"], "the run finished before the kill"
    assert at_kill["logged"][3].startswith("80,"), at_kill  # steps after the checkpoint of step 60 to redo
    assert "initialised the network from" in at_kill["said"] + straight.stdout + straight.stderr  # round 1's weights

    again = run(command("train.py", *round2(tmp, killed), processes=2))
    said = again.stdout + again.stderr
    resumed = re.findall(r"resumed from \S+step_(\d+) at step (\d+)", said)
    latest = int(at_kill["checkpoints"][-1][len("step_"):])
    assert resumed == [(f"{latest:08d}", str(latest))], (resumed, at_kill, said[-2000:])
    assert "initialised the network from" not in said  # the checkpoint, not init_from
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in (reference, killed)]
    assert [s["num_processes"] for s in summaries] == [1, 2]
    assert all(s["steps"] == 240 and s["updates"] == {"net": 240} for s in summaries)

    logged = [logged_losses(d) for d in (reference, killed)]
    assert len(logged[1]) == 12 and logged[1][-1] < 0.8 * logged[1][0], logged
    assert logged[1] == pytest.approx(logged[0], rel=1e-5)
    for weights in ("model/unet/diffusion_pytorch_model.safetensors",  # the exported EMA weights
                    "checkpoints/step_00000240/model.safetensors"):  # the raw weights
        a, b = (load_file(str(d / weights)) for d in (reference, killed))
        assert a.keys() == b.keys() and a
        assert all(norm_gap(b[k], a[k]) <= 1e-5 for k in a), weights
