"""Pure tensor primitives shared by every family (no model, no hooks, no state).

``matching``/``merge``: bipartite soft matching and size-weighted merging; ``prune``/``assign``: keep
masks and token assignments; ``scoring``: importance and redundancy scores; ``schedule``: how many
tokens each layer removes; ``dims``: a model's shape for cost formulas.
"""
