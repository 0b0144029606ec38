"""One module per CLI subcommand; `critstep.cli` registers them. Heavy imports stay inside the
command functions so that `critstep --help` starts fast."""
