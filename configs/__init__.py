"""Preset configs, shipped inside the package as ``dl_lab.presets`` (see pyproject.toml)."""
