"""``python -m fedcare.cli`` is the ``fedcare`` command."""

from fedcare.cli.main import main

main()
