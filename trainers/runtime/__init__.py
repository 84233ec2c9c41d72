"""One trial's runtime.

    algorithm.py      the contracts every algorithm implements and declares (AlgorithmDeclaration)
    tasks.py          the task registry: environment, spaces, data reader, reference scores, targets
    evaluation.py     batched (and the original sequential) evaluation in real simulators
    registry.py       the algorithm registry: one line per name
    record.py         the trial record, resolved once and carried unchanged
    core.py           the Ray-free trial core: update, evaluate, report, checkpoint
    distributed.py    its Ray Train adapter (DDP)
    train.py          `python -m trainers.runtime.train`: one trial by hand
    cpu_allocator.py  glibc's allocator kept from returning tensor buffers after every use
"""
