"""Graph-to-graph passes and the pass manager (see docs/architecture.md). Imports only `ir`."""
