"""The `advguard` console script: one module per subcommand (see `advguard.cli.main`)."""
