"""Reading and writing models: model directories, workdirs, PyTorch checkpoints, the serving artefact."""
