"""One module per stage of `compress`, in the order pipeline/flow.py runs them:

    train -> prune -> distill -> confidence (temperature) -> export -> verify -> profile -> report

Each module names its stage (NAME: the run directory's folder), builds its cache key next to
its body (`key`), and runs through the run directory (`run`), so a stage whose inputs and
config are unchanged is reused. Stages take and return `StageResult`s (pipeline/rundir.py):
the stage's folder, the info it recorded and the digest of its files.
"""
