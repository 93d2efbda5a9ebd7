from prefdyn.cli import main

main()
