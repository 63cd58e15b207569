"""Ingest: turn GSM8K, PRM800K or any JSONL / JSON / Parquet file into a `responses` file.

Each source module maps one input record to one checked row (``to_row``); ``common`` reads the
records with their file:line, streams the rows to Parquet and keeps the skip bookkeeping.
Nothing is imported here, so `stepdpo ingest --help` does not wait for pyarrow.
"""
