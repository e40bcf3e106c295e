"""`python -m prunekit` runs the command line."""

from prunekit.cli import app

app(prog_name="prunekit")
