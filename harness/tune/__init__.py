"""`bench tune`: search the configurations a plan's models can run here, prune honestly, measure
the survivors with the full protocol, and write the fronts, the winner and tuned.yaml.

space.py builds the candidates from the runtime plug-ins, search.py runs the two stages through
the normal launcher and worker, pareto.py holds the dominance rules, tuned.py writes the plan
that reproduces the result, labels.py names a candidate in words (the report uses it too).
Nothing here is imported by `bench --help`. docs/tune.md.
"""
