"""Base for request bodies: strings a database would refuse are refused here, naming the field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


def check_text(value: str) -> str:
    # PostgreSQL cannot store NUL in text; SQLite would store it and surprise every reader later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str):
            return check_text(value)
        return value
