"""`python -m trainers.sequence.language pretrain --out DIR`: trainers/sequence/language/pretrain.py."""

from trainers.sequence.language.pretrain import main

main()
