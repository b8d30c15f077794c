from embcli.cli import main

main()
