"""``python -m sam_train`` (what ``torchrun -m sam_train`` runs)."""

from sam_train.cli import main

main()
