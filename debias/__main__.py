"""``python -m debias`` runs the command line, so ``torchrun ... -m debias train`` works."""

from cli.main import main

main()
