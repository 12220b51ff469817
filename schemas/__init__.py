"""Message contracts of streamscore (docs/design.md, Messages) and their validation: input,
scored and dead-letter messages (``messages``), drift signals and alerts (``drift``).

Imports nothing else of the project.
"""

from streamscore.schemas.messages import (
    DeadLetter,
    InputText,
    Origin,
    Rejection,
    dead_letter_record,
    parse_input,
    scored_record,
)

__all__ = [
    "DeadLetter",
    "InputText",
    "Origin",
    "Rejection",
    "dead_letter_record",
    "parse_input",
    "scored_record",
]
