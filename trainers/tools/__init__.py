"""Command-line tools around the data (each a `python -m trainers.tools.<name>`):

    fetch.py           datasets by name into the caches the readers look in (D4RL files, Minari datasets)
    make_dataset.py    D4RL-layout datasets generated in the real simulators (reacher2d, locomotion)
    atari_replay.py    Atari data in the DQN Replay layout from a scripted policy in ALE; inspect a directory
    dataset_report.py  a dataset summarised, and the random and behaviour policies evaluated on its task
"""
