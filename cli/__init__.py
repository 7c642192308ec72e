"""The `posflow` command: one binary, the roles of the product as subcommands."""
