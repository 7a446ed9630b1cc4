"""The `dllab` command line: one small module per command, plus the progress display."""
