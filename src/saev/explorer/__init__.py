"""The interactive explorer (`saev serve`): a local web app over a spliced SAE.

`session` holds the state and computations and needs nothing beyond saev; `app` serves them with
FastAPI (the optional `serve` extra)."""
