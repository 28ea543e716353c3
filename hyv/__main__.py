"""`python -m hyv ...` is the `hyv` command."""

from hyv.cli import app

app(prog_name="hyv")
