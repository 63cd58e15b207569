"""The labeling engine: the async runner, the run folder, the judge cache, rate limits, retry
timing, prices and progress. Online labeling and provider batch mode both go through it."""
