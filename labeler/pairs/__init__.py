"""Preference pairs from labeled runs: strategies (first-error, best-worst, PRM800K
alternatives), aggregation of step scores into rewards, and the pairs folder they are written to."""
