"""Provider batch mode: the same judge requests sent through the OpenAI Batch API or Anthropic
Message Batches (half price, hours of latency), with batch ids persisted in the run folder so a
crashed run attaches to its batches instead of paying twice. Entry point:
:func:`labeler.batch.runner.run_batch_label`.
"""
