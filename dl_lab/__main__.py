from dl_lab.cli.app import main

main()
