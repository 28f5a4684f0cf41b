"""The Hydra configs of the entry points (`sample.yaml`, `train.yaml`, `eval.yaml`,
`calibrate.yaml`) and their groups; the scripts load them as `pkg://fewstep.conf`."""
