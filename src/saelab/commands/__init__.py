"""Command-line groups: one module per group, each with register(subparsers); cli.py assembles them."""
