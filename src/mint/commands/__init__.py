"""CLI subcommands; see mint.cli."""
