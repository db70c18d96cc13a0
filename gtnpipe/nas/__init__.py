"""Hardware-aware neural architecture search: the accuracy predictor, evolution under the cost model, Pareto plots.

(Not `gtnpipe.search`: that name is the Python API's function, `gtnpipe.search(device, ...)`.)"""
