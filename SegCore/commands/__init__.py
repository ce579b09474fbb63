"""The `segcore` subcommands, one module each (see `SegCore/cli.py` for the contract)."""
