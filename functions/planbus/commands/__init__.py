"""Subcommands of the `planbus` command line."""
