"""Subcommands of the `planbus` command line (stack_options: what `demo` and `dev` share)."""
