"""Lowering: a fused group of the graph IR -> one `ir.loop.Kernel`, shared by every target.

`group.lower_group(fused_node, name)` builds the kernel; `scalar` holds the scalar formula of
every elementwise op, `indexing` the index maps of movement ops, and `templates` (with
`templates_nn`: convolutions and pools, `templates_scan`: cumsum and scatter) the loop nests of
the ops that must be computed into a buffer (reductions, contractions, norms, ...).
"""
