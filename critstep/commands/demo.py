"""`critstep demo`: the whole pipeline on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True,
              help="Directory for every output of the run.")
@click.option("--features", default=None,
              help="Feature groups of the distilled selector (add 'token' or 'hidden' for the small LM's features: slower). "
                   "[default: the distilled selector's default groups]")
@click.option("--tune-steps", type=click.IntRange(1), default=30, show_default=True, help="QLoRA optimizer steps.")
@click.option("--max-seq-len", type=click.IntRange(64), default=1024, show_default=True, help="Longest training window in tokens.")
@click.option("--limit", type=click.IntRange(4), default=None, help="Use only the first N trajectories of the sample (a quick look).")
@click.option("--live/--recorded", "live", default=None,
              help="Label with the live oracle or use the recorded labels (default: live when OPENAI_API_KEY or OPENAI_BASE_URL is set).")
@click.option("--oracle-model", default="gpt-4o", show_default=True, help="Model of the live oracle.")
@click.option("--max-oracle-cost", type=float, default=2.0, show_default=True, help="Dollar cap of the live oracle's labeling.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(out: Path, features: str | None, tune_steps: int, max_seq_len: int, limit: int | None, live: bool | None,
            oracle_model: str, max_oracle_cost: float, quiet: bool) -> None:
    """Run the whole pipeline on the bundled sample: validate, teacher labels, distill, select,
    compare, QLoRA-tune SmolLM2-135M on the distilled selection, eval loss before and after.

    Needs no API key, GPU or network; about 4 minutes on 2 free CPU cores. Each stage's expected
    time here (from the cores and the load) is printed before it starts.
    """
    from critstep.demo import DemoOptions, live_oracle_available, run_demo

    options = DemoOptions(
        out=out,
        features=features,
        tune_steps=tune_steps,
        max_seq_len=max_seq_len,
        limit=limit,
        live_oracle=live_oracle_available() if live is None else live,
        oracle_model=oracle_model,
        max_oracle_cost=max_oracle_cost,
        progress=not quiet,
    )
    run_demo(options, echo=click.echo)
