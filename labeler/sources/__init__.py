"""Where responses come from: ingest (GSM8K, PRM800K, any JSONL), step splitters, perturbed
variants, and generation from a policy. Each writes a `responses` file."""
