"""``python -m bhcore`` runs the CLI."""
from .cli.main import app

app(prog_name="bhcore")
