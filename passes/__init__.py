"""Graph-to-graph passes and the pass manager. Imports only `ir`.

Importing this package registers every pass (`passes.manager.PASSES`); build pipelines with
`parse_pipeline` or `passes.pipelines.default_pipeline`.
"""

from passes import (  # noqa: F401  (imported to register the passes)
    canonicalize,
    cse,
    fold_constants,
    fuse,
    layout,
    lower_precision,
    prune_dead_nodes,
    qdq,
    quantize,
)
from passes.manager import (
    PASSES,
    Instrument,
    Numerics,
    Pass,
    PassManager,
    get_pass,
    make_pass,
    parse_pipeline,
    register_pass,
)

__all__ = [
    "PASSES",
    "Instrument",
    "Numerics",
    "Pass",
    "PassManager",
    "get_pass",
    "make_pass",
    "parse_pipeline",
    "register_pass",
]
