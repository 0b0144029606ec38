"""The benchmarks' result files: each script claims its outputs before its work and writes its
result marked as its own (`critstep.io.write_result`), so an `--out` never replaces a file the
benchmark did not write. Imported by the scripts (benchmarks/ is on sys.path when one runs)."""

from __future__ import annotations

from pathlib import Path

from critstep.errors import OutputError
from critstep.io import check_result_paths


def claim_results(benchmark: str, result: Path, *beside: Path) -> None:
    """`check_result_paths`, or exit with its one line before any work."""
    try:
        check_result_paths(benchmark, result, *beside)
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None
