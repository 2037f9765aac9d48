"""The `greenmesh` command line (typer + rich)."""
