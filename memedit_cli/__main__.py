from memedit_cli.cli import main

main()
