"""Ingest: turn GSM8K, PRM800K or any JSONL / JSON / Parquet file into a `responses` file.

Each source module maps one input record to one checked row (``to_row``); ``common`` reads the
records with their file:line, streams the rows to Parquet and keeps the skip bookkeeping.
"""

from labeler.ingest.common import IngestStats, Record, RecordError, ResponsesWriter, iter_records

__all__ = ["IngestStats", "Record", "RecordError", "ResponsesWriter", "iter_records"]
