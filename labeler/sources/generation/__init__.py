"""Sampling a policy: backends behind one small async interface, and the engine that runs them.

Public API (each name lives in the module noted; nothing here imports torch or an SDK):

* ``base``      — :class:`Generator` (the interface), :class:`GenRequest`, :class:`Generation`,
                  :class:`Sampling`
* ``registry``  — ``create_generator("hf:PATH" | "openai-compatible:MODEL@URL" | "openai:M" |
                  "anthropic:M", GeneratorOptions())``; SDKs and torch are imported lazily
* ``prompts``   — templates (``step-dpo``, ``chat``, ``plain``, or a JSON file)
* ``problems``  — ``load_problems(path)``: problems with gold answers from any input
* ``tasks``     — ``sample_tasks`` / ``continuation_tasks`` (``--continue-from``)
* ``runner``    — :class:`GenerationEngine`: rate limits, retries, cache, shards, progress, cost
* ``store``     — the output folder (:class:`GenerationDir`) and :class:`GenerationCache`

Other parts use a backend directly, e.g. Monte-Carlo rollouts::

    gen = create_generator("hf:work/model", GeneratorOptions(batch_size=32))
    outs = await gen.generate([GenRequest(key="x", prompt=text, prefill="Step 1: ")], Sampling())
"""
