"""One trial's world, in rooms (tests/test_layers.py holds their floors: imports point down, never in a circle):

    envs/      the environments this project builds: reacher2d, kitchen in D4RL's layout, Atari with its wrappers
    data/      the in-memory dataset and its readers (D4RL hdf5, Minari, DQN Replay), data ratios, samplers
    runtime/   the algorithm contracts, tasks, evaluation, the trial record, the registry, the Ray-free trial core
               and its Ray Train adapter, `python -m trainers.runtime.train`
    sequence/  LaMo, its ablations, DT and Wiki-RL: GPT-2, the trajectory transformer, its policy, its settings
               and training; language data for the auxiliary loss (sequence/language/)
    tools/     command-line tools around the data: fetch, make_dataset, atari_replay, dataset_report

The baselines (CQL, IQL, TD3+BC, BC) live in baselines/, beside this package.
"""
