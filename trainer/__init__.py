"""The training half: StepwiseDPOConfig, StepwiseDPOTrainer, losses, collator, streaming data.

It reads only what `schemas` defines and never imports `labeler`, so a GPU box needs nothing
but the pair shards.
"""
