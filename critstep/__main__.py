from critstep.cli import cli

cli()
