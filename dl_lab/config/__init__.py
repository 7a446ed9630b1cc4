"""The experiment config: schema, loading (files, `extends`, `--set`) and the names of every option.

Bottom layer: imports neither torch nor any builder (components)."""
