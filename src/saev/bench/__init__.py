"""`saev bench`: a scorecard of SAE metrics, each with a bootstrap interval over images, computed
from one encoding pass over a store. One module per metric family; `run` assembles them, `report`
writes report.json, the table and index.html. Definitions and their validation: docs/bench.md."""
