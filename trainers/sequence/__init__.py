"""LaMo, its ablations, Decision Transformer and Wiki-RL: one family for vector and frame observations.

    gpt2.py       GPT-2 as a plain module (q, k, v split for LoRA), initialised from Hugging Face's
    model.py      the trajectory transformer: the modality picks its state encoder, action embedding, head, loss
    policy.py     the evaluation policy: a rolling K-step context per environment
    config.py     the settings: Config, presets, LaMo's Atari settings, how runs differ from the sources
    algorithm.py  the training: backbone, LoRA, AdamW, learning-rate schedules, the auxiliary language loss
    language/     language data for that loss, and a tiny GPT-2 pre-trained here
"""
