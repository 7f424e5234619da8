"""Command line interface (click); see imgdup.cli.main."""
