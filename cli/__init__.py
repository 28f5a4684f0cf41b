"""The command-line edge: the Hydra schemas (`schemas`), the steps from a checked config to the plain
arguments the libraries take (`sampling`, `setup`), and what every command shares (`common`). Only
`scripts/` imports this package; no library package does."""
