"""ReFlow pairs written under `accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo) are
those one process writes. The next round, trained on them in two processes and killed with SIGKILL:
test_reflow_multiprocess_resume.py (a file of its own, so that `--dist loadfile` runs the two on both
workers)."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from helpers import REFLOW_PAIRS as PAIRS, command, finish, flow_at, ok, run_cli, start, stop
from fewstep.flows import PairsDataset

SHARDS = 5  # helpers.REFLOW_PAIRS: 1200 pairs, 256 a shard


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The pairs of a 2-D flow (untrained: the pairs only have to be those of one flow) written by two
    processes (`accelerate launch`) and, at the same time, by one (this one)."""
    tmp = tmp_path_factory.mktemp("reflow_mp")
    flow_at(tmp / "flow", seed=0)
    model = f"model.path={tmp / 'flow'}"
    runs = [start(command("reflow_pairs.py", *PAIRS, model, f"out_dir={tmp / 'pairs2'}", processes=2), tmp / "pairs2")]
    try:
        one = ok(run_cli("reflow_pairs.py", *PAIRS, model, f"out_dir={tmp / 'pairs1'}"))
        (two,) = map(finish, runs)
    finally:
        stop(*runs)
    return tmp, one, two


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
