"""Lowering: a fused group of the graph IR -> one `ir.loop.Kernel`, shared by every target.

`kernel_for(fused_node)` builds the kernel; `scalar` holds the scalar formula of every
elementwise op, `indexing` the index maps of movement ops, `templates` the loop nests of the
ops that must be computed into a buffer (reductions, contractions, norms, ...).
"""
