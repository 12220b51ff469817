"""Message contracts of streamscore (docs/design.md, Messages) and their validation."""

from schemas.messages import (
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
