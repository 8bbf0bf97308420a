"""Which items to label next: selection strategies (:mod:`.strategies`), the numbers they rank by
(:mod:`.scoring`) and one call that does both (:mod:`.choose`)."""

from semiseg.selection.choose import SUGGESTION_FIELDS, Choice, choose_next
from semiseg.selection.strategies import COLD_START, STRATEGIES, Selection, select

__all__ = ["COLD_START", "STRATEGIES", "SUGGESTION_FIELDS", "Choice", "Selection", "choose_next", "select"]
