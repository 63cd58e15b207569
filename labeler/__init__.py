"""The labeling half: ingest, step splitting, judges, the async engine, cache, pairs, inspect.

Importing this package never imports torch or transformers; only the local-PRM judge does,
lazily, when it is used.
"""
