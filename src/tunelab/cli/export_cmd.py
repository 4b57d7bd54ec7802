"""`tunelab export ...`: merge, gguf, verify, hub. Each command lives in its own module and is registered
here; the work is done by tunelab.export."""

from __future__ import annotations

import typer

from .export_gguf_cmd import export_gguf
from .export_hub_cmd import card, hub
from .export_merge_cmd import merge, verify

app = typer.Typer(help="Get a trained model out: merged weights, GGUF + Ollama, a parity check, the Hub.",
                  no_args_is_help=True)
app.command("merge")(merge)
app.command("verify")(verify)
app.command("gguf")(export_gguf)
app.command("hub")(hub)
app.command("card")(card)
