"""Hardware-aware search: the accuracy predictor, evolution under the cost model, Pareto plots."""
