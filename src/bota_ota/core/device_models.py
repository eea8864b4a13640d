"""The device models bota-ota serves, and the check every domain applies to a model name."""

from __future__ import annotations

from bota_ota.core.errors import ValidationFailed

DEVICE_MODELS: dict[str, str] = {
    "bota-pin": "Bota Pin",
    "bota-pin-pro": "Bota Pin Pro",
    "bota-note": "Bota Note",
}


def check_model(model: str, field: str = "model") -> str:
    """The model name, stripped; 422 naming ``field`` unless it is one of ``DEVICE_MODELS``."""
    model = model.strip()
    if model not in DEVICE_MODELS:
        raise ValidationFailed(f"model must be one of {', '.join(DEVICE_MODELS)}; got {model!r}", field=field)
    return model
