"""The interactive explorer (`saev serve`): a local web app over a spliced SAE.

`session` holds the state and computations and needs nothing beyond saev; `app` serves them with
FastAPI (the optional `serve` extra); `server` finds the images and the address to serve. Where
the steering and visuals layers meet outside the app, the explorer layer holds it too: `pictures`
(an edit before and after, for `saev steer` and the quickstart) and `lens` (the logit lens on the
gallery's pages)."""
