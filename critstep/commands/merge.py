"""`critstep merge`: fold a LoRA adapter into its base model's weights."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("merge")
@click.argument("adapter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory for the merged model.")
@click.option("--base-model", default=None, help="Base model (default: the one the adapter was tuned from).")
def command(adapter: Path, out_dir: Path, base_model: str | None) -> None:
    """Merge ADAPTER (a `critstep tune` output) into its base model, reloaded unquantized, and save it to OUT.

    \b
    critstep merge runs/smol --out runs/smol-merged
    """
    from critstep.io import check_outputs_apart
    from critstep.tuner import merge_adapter

    check_outputs_apart({"ADAPTER": adapter, "--base-model": base_model}, {}, {"--out": out_dir})
    click.echo(f"wrote {merge_adapter(adapter, out_dir, base_model)}")
