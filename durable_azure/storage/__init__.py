"""The Azure Storage provider (DTFx layout)."""
