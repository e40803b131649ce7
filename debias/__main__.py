"""``python -m debias`` runs the command line, so ``torchrun ... -m debias train`` works."""

from debias_cli.main import main

main()
