"""Built-in typicality flag: a result whose image lies far from the training population in the
classifier's feature space (``ctai.model.typicality``; score above 1) is delivered flagged
"atypical", or withheld when ``[inputs] atypical = "withhold"``."""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.model.typicality import ATYPICAL
from ctai.types import Flag, Result


@hookimpl
def ctai_flags(result: Result, config: Config) -> list[Flag] | None:
    action = config["inputs"]["atypical"]  # one of ctai.config.CHOICES
    score = result.prediction.typicality
    if action == "off" or score is None or score <= 1:
        return None
    reason = (f"{ATYPICAL} (typicality score {score:.1f}, above 1): unlike the films this model was "
              "trained on, so its probabilities may not hold")
    return [Flag("atypical", reason, withhold=action == "withhold")]
