"""``python -m lowprob`` runs the command line."""

from lowprob.cli import main

main()
