"""Language data for LaMo's auxiliary LM loss, and a tiny GPT-2 pre-trained here. The room by job:

    hub.py          pre-trained GPT-2s from a local directory or the Hugging Face Hub (fails fast offline)
    corpora.py      corpora as a config choice: WikiText, .txt files, the standard library's documentation
    tokenizers.py   the byte-level tokenizer or a model's own; a corpus as one stream of ids
    token_cache.py  token streams built once per node, memory-mapped by every trial
    batches.py      LanguageBatches: LM windows for the auxiliary loss
    pretrain.py     `python -m trainers.sequence.language pretrain`: a tiny GPT-2 from scratch
"""
