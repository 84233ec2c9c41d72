"""The data layer: one in-memory dataset every format is read into, behind one reader protocol.

    trajectories.py     TrajectoryDataset, its checks and the episode-flag rule; DatasetError
    loading.py          the DatasetReader protocol and `load_task_dataset` (the readers below, cached per process)
    node_cache.py       datasets converted once per node and memory-mapped by every trial on it
    d4rl.py             D4RL's hdf5 layout: read, write, where files are (D4RLFile)
    minari_datasets.py  Minari datasets through the `minari` package (MinariData)
    dqn_replay.py       Atari's DQN Replay checkpoints (DQNReplay)
    subsets.py          data ratios: seeded trajectory subsets
    samplers.py         K-step windows and transitions, drawn as batches
    catalog.py          where external datasets come from (D4RL's URLs, Minari ids)
    checksums.py        SHA-256 of files and directories
"""
