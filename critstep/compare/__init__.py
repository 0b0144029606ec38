"""`critstep compare`'s parts: run selectors with timing, price them, report, plot.

Each module does one job: `run` (selections + wall time), `costs` (dollars per 1,000
trajectories), `report` (metrics table as JSON and Markdown), `plot` (cost versus F1).
"""
