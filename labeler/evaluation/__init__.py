"""Evaluating a policy: grade its sampled solutions against gold answers (accuracy, pass@k,
maj@k) and compare two evaluations on the same problems with a paired bootstrap."""
