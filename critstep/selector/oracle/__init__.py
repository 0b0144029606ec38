"""The LLM oracle: ATLaS critical-step labels from GPT-4o or any OpenAI-compatible server.

Modules, one job each: `prompt` (the versioned prompt), `schema` (answer schema and validation),
`client` (openai client, retries, response-format fallback), `cache` (append-only answer cache),
`pricing` (price table, token estimate), `batch` (Batch API), `labeler` (the run), `results`
(estimate and run records), `config`, `selector`.
"""

from critstep.selector.oracle.config import OracleConfig
from critstep.selector.oracle.labeler import OracleLabeler
from critstep.selector.oracle.pricing import PriceTable, load_prices
from critstep.selector.oracle.prompt import PROMPT_VERSION
from critstep.selector.oracle.results import CostEstimate, LabelRun
from critstep.selector.oracle.selector import OracleSelector

__all__ = ["PROMPT_VERSION", "CostEstimate", "LabelRun", "OracleConfig", "OracleLabeler", "OracleSelector", "PriceTable", "load_prices"]
