from dl_lab.cli import main

main()
