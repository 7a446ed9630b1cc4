"""The run store: folder names, atomic files, locks, the typed records of summary.json and plan.json,
and the recorder that keeps a run folder current while it trains. Torch-free."""
