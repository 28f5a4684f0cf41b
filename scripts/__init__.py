"""The entry points, thin: each parses its config, calls the packages and prints. Run them as
`python scripts/<name>.py` from a checkout or as the installed `fewstep-*` commands."""
