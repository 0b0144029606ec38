"""Step selectors behind one interface (`Selector.select`): baselines, the LLM oracle, the
distilled selector and the cascade between them. `build_selector` imports lazily so that a
selector's heavy dependencies load only when it is used."""

from critstep.selector.base import Selector, top_k

__all__ = ["Selector", "top_k"]
